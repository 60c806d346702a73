//! The `automation-host` binary: parses the command line, sets up logging,
//! and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use automation_host::config::{ApiKeyCommand, Cli, Command, Config, LogFormat, PluginCommand};
use automation_host::model::{KeyRefusal, Scope};
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
    let mut cli = Cli::parse();
    // The keys are read; take them out of the environment (and out of
    // /proc/<pid>/environ) before any thread or child process exists.
    scrub_environment(&["AUTOMATION_API_KEY", "AUTOMATION_SECRET_KEY", "AUTOMATION_GITHUB_WEBHOOK_SECRET"]);
    if let Some(path) = &cli.config.api_key_file {
        match std::fs::read_to_string(path) {
            Ok(key) => cli.config.api_key = Some(key.trim().to_owned()),
            Err(e) => {
                eprintln!("automation-host: cannot read AUTOMATION_API_KEY_FILE {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
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
    // Background work (matching, runs, schedules) on threads of its own that
    // yield the CPU to the acknowledgement path.
    let background_nice = cli.config.background_nice;
    let background = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("automation-bg")
        .on_thread_start(move || {
            if let Err(e) = automation_host::sandbox::lower_thread_priority(background_nice) {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| tracing::warn!(error = %e, "background threads keep the host's priority"));
            }
        })
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("automation-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = background.handle().clone();
    let result = runtime.block_on(run(cli, handle));
    background.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
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

async fn run(cli: Cli, background: tokio::runtime::Handle) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, background).await,
        Command::Migrate => {
            open_store(&config, true).await?;
            println!("migrations applied to {}", automation_host::redact(&config.effective_database_url()));
            Ok(())
        }
        Command::Plugin(PluginCommand::New(args)) => {
            let dir = automation_host::plugin_new::new(&args)?;
            println!("made {} in {}: see its README.md to build, call and upload it", args.name, dir.display());
            Ok(())
        }
        Command::Plugin(PluginCommand::Call(args)) => {
            // Not `./data/plugin-cache` in whatever directory the author is
            // in (a plugin's source tree), unless they chose a data dir.
            let chosen = config.plugin_cache_dir.is_some() || config.data_dir != std::path::Path::new("./data");
            let cache = if chosen {
                config.cache_dir()
            } else {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(std::env::temp_dir)
                    .join("automation-host/plugin-cache")
            };
            let code = automation_host::plugin_cli::call(args, cache).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::ApiKey(command) => api_key(&config, command).await,
    }
}

async fn api_key(config: &Config, command: ApiKeyCommand) -> anyhow::Result<()> {
    let store = open_store(config, !config.no_migrate).await?;
    match command {
        ApiKeyCommand::Create { name, scopes, expires_in_days } => {
            let expires_at = automation_host::api::key_expiry(expires_in_days).map_err(anyhow::Error::msg)?;
            let key = create_key(&store, &name, &scopes, expires_at).await?;
            println!("{key}");
            let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "API key {:?} created with scope(s) {}. It is shown only this once; only its hash is stored.",
                name.trim(),
                scopes.join(", ")
            );
        }
        ApiKeyCommand::List => {
            println!("{:<36}  {:<20}  {:<10}  {:<24}  {:<20}  status", "id", "name", "prefix", "scopes", "last used");
            let now = automation_host::model::now();
            for k in store.list_api_keys().await? {
                let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                let status = match k.refusal(now) {
                    Some(KeyRefusal::Revoked(at)) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    Some(KeyRefusal::Expired(at)) => format!("expired {}", at.format("%Y-%m-%d %H:%M")),
                    None => match k.expires_at {
                        Some(at) => format!("live, expires {}", at.format("%Y-%m-%d %H:%M")),
                        None => "live".to_owned(),
                    },
                };
                let used =
                    k.last_used_at.map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string());
                println!(
                    "{:<36}  {:<20}  {:<10}  {:<24}  {:<20}  {status}",
                    k.id,
                    k.name,
                    k.prefix,
                    scopes.join(","),
                    used
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let info = store
                .revoke_api_key(id, automation_host::model::now())
                .await?
                .with_context(|| format!("no API key with id {id}"))?;
            eprintln!("API key {:?} ({id}) revoked; it is refused from its next request on.", info.name);
        }
    }
    Ok(())
}

async fn create_key(
    store: &automation_host::store::Store,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<String> {
    let (key, info) = auth::mint(name, scopes, expires_at).context("cannot create the key")?;
    store.insert_api_key(&info, &auth::hash_key(&key)).await?;
    Ok(key)
}

async fn serve(config: Config, background: tokio::runtime::Handle) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let store = open_store(&config, !config.no_migrate).await?.with_front_runtime(tokio::runtime::Handle::current());
    tracing::info!(
        database = %automation_host::redact(&config.effective_database_url()),
        dialect = ?store.dialect(),
        "database ready"
    );
    if config.api_key.is_none() && store.count_api_keys().await? == 0 {
        // A first start with no way in would be a dead end: make one key.
        let key = create_key(&store, "initial-admin", &[Scope::Admin], None).await?;
        println!("No API key was configured, so one was created (shown only now; only its hash is stored):");
        println!("  {key}");
        println!("Use it as `Authorization: Bearer {key}`, or set AUTOMATION_API_KEY.");
    }
    let plugins = automation_host::start_plugins(&config, Some(&store), background.clone()).await?;
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (AUTOMATION_LISTEN)"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening");
    // One machine-readable line on stdout; the tests read the port from it.
    println!("automation-host listening on http://{local}");
    automation_host::serve(config, store, plugins, listener, automation_host::shutdown_signal(), background).await
}

/// Overwrites the values of `names` where the kernel keeps the process's
/// initial environment (what `/proc/<pid>/environ` shows to processes of
/// the same user), then removes them, so the keys are in neither place.
fn scrub_environment(names: &[&str]) {
    for name in names {
        let Ok(c_name) = std::ffi::CString::new(*name) else { continue };
        #[allow(unsafe_code)]
        // SAFETY: called at the start of main, before any other thread exists,
        // so nothing reads or changes the environment concurrently. getenv
        // returns a pointer to the value's NUL-terminated bytes, which we
        // overwrite within their own length.
        unsafe {
            let value = libc::getenv(c_name.as_ptr());
            if !value.is_null() {
                let len = libc::strlen(value);
                std::ptr::write_bytes(value, b'*', len);
            }
            std::env::remove_var(name);
        }
    }
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
