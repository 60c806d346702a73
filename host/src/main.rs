//! The `automation-host` binary: parses the command line, sets up logging,
//! and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use automation_host::config::{ApiKeyCommand, Cli, Command, Config, LogFormat, PluginCommand};
use automation_host::model::ApiKeyInfo;
use automation_host::{auth, open_store};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The sandbox launcher is this binary in a helper mode: it must start
    // before anything else (no runtime, no threads, no configuration).
    if std::env::args_os().nth(1).is_some_and(|a| a == automation_host::sandbox::policy::LAUNCHER_ARG) {
        automation_host::sandbox::launcher::main();
    }
    return_big_allocations_to_the_system();
    let cli = Cli::parse();
    if let Err(problems) = cli.config.validate() {
        eprintln!("automation-host: {problems}");
        return ExitCode::from(2);
    }
    init_tracing(&cli.config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("automation-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("automation-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            open_store(&config, true).await?;
            println!("migrations applied to {}", automation_host::redact(&config.effective_database_url()));
            Ok(())
        }
        Command::Plugin(PluginCommand::Call(args)) => {
            let cache = config.cache_dir();
            let code = automation_host::plugin_cli::call(args, cache).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create { name }) => {
            let store = open_store(&config, !config.no_migrate).await?;
            let key = create_key(&store, &name).await?;
            println!("{key}");
            eprintln!("API key {name:?} created. It is shown only this once; only its hash is stored.");
            Ok(())
        }
    }
}

async fn create_key(store: &automation_host::store::Store, name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    anyhow::ensure!(!name.is_empty() && name.len() <= 200, "--name must be 1 to 200 characters");
    let key = auth::generate_key();
    let info = ApiKeyInfo {
        id: uuid::Uuid::now_v7(),
        name: name.to_owned(),
        prefix: auth::display_prefix(&key),
        created_at: chrono::Utc::now(),
    };
    store.insert_api_key(&info, &auth::hash_key(&key)).await?;
    Ok(key)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let store = open_store(&config, !config.no_migrate).await?;
    tracing::info!(
        database = %automation_host::redact(&config.effective_database_url()),
        dialect = ?store.dialect(),
        "database ready"
    );
    if config.api_key.is_none() && store.count_api_keys().await? == 0 {
        // A first start with no way in would be a dead end: make one key.
        let key = create_key(&store, "initial-admin").await?;
        println!("No API key was configured, so one was created (shown only now; only its hash is stored):");
        println!("  {key}");
        println!("Use it as `Authorization: Bearer {key}`, or set AUTOMATION_API_KEY.");
    }
    let plugins = automation_host::start_plugins(&config, Some(&store)).await?;
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (AUTOMATION_LISTEN)"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening");
    // One machine-readable line on stdout; the tests read the port from it.
    println!("automation-host listening on http://{local}");
    automation_host::serve(config, store, plugins, listener, automation_host::shutdown_signal()).await
}

/// Has glibc serve allocations of 1 MiB and more (request bodies, uploads,
/// components) from their own mappings, given back to the system when
/// freed. By default glibc raises that threshold after the first such free,
/// up to 32 MiB, and later 25 MiB bodies then come from the heap, whose
/// freed pages mostly stay resident: under a flood of big posts the host
/// kept about twice the memory its body budget allows.
fn return_big_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator tuning; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
