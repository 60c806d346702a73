//! Loaded plugins by name. Replacing one swaps an `Arc`: calls already
//! running keep the old plugin until they finish; new calls get the new one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::manifest::{Kind, Manifest};
use super::{LoadError, Plugin, Runtime, Source};
use crate::store::Store;

/// Why a named plugin cannot serve a purpose.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// No plugin has that name.
    #[error("no plugin named {name:?} is loaded (GET /v1/plugins lists them)")]
    Unknown {
        /// The name.
        name: String,
    },
    /// The plugin is of another kind.
    #[error("plugin {name:?} is of kind {actual}, not {wanted}")]
    WrongKind {
        /// The name.
        name: String,
        /// Its kind.
        actual: &'static str,
        /// The kind wanted.
        wanted: &'static str,
    },
}

/// The plugins this host can call.
pub struct Registry {
    runtime: Arc<Runtime>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Bundled and directory plugins, to fall back to when an uploaded
    /// plugin of the same name is deleted.
    base: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// The thread of [`Registry::idle`], started on first use.
    idle: std::sync::OnceLock<std::sync::mpsc::Sender<IdleJob>>,
}

/// A call for the idle thread.
type IdleJob = Box<dyn FnOnce(&Runtime) + Send>;

impl Registry {
    /// An empty registry over a runtime.
    pub fn new(runtime: Arc<Runtime>) -> Registry {
        Registry { runtime, plugins: RwLock::default(), base: RwLock::default(), idle: std::sync::OnceLock::new() }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Loads the bundled plugins, then the plugins directory, then uploaded
    /// plugins from the database; later sources win by name. A bundled
    /// plugin that fails to load is fatal (the build is broken); others are
    /// logged and skipped so the host still starts.
    pub async fn load_all(&self, dir: Option<&Path>, store: Option<&Store>) -> anyhow::Result<()> {
        for (manifest, wasm) in super::bundled::all()? {
            let plugin = self.load_blocking(manifest, wasm.to_vec(), Source::Bundled, None).await?;
            self.insert_base(plugin);
        }
        if let Some(dir) = dir {
            for (manifest, wasm) in read_dir(dir)? {
                match self.load_blocking(manifest, wasm, Source::Directory, None).await {
                    Ok(p) => self.insert_base(p),
                    Err(e) => tracing::error!("skipping a plugin from {}: {e}", dir.display()),
                }
            }
        }
        if let Some(store) = store {
            self.reload_uploaded(store).await?;
        }
        Ok(())
    }

    /// Loads (and replaces) every uploaded plugin from the database.
    pub async fn reload_uploaded(&self, store: &Store) -> anyhow::Result<()> {
        let stored_plugins = store.list_plugins().await?;
        let gone: Vec<String> = self
            .list()
            .iter()
            .filter(|p| p.source == Source::Uploaded && !stored_plugins.iter().any(|s| s.name == p.name()))
            .map(|p| p.name().to_owned())
            .collect();
        for name in gone {
            self.remove_uploaded(&name);
        }
        for stored in stored_plugins {
            let name = stored.name.clone();
            let manifest: Manifest = match serde_json::from_value(stored.manifest) {
                Ok(m) => m,
                Err(e) => {
                    // Written by this host's API; only a downgrade could get here.
                    tracing::error!(plugin = %name, error = %e, "skipping an uploaded plugin: unreadable manifest");
                    if self.get(&name).is_some_and(|p| p.source == Source::Uploaded) {
                        self.remove_uploaded(&name);
                    }
                    continue;
                }
            };
            let recorded = match store.get_plugin_grant(&name, &stored.sha256).await {
                Ok(r) => r.and_then(|r| super::manifest::Grant::from_names(&r.capabilities, &r.allowed_hosts).ok()),
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "cannot read the plugin's recorded grant");
                    None
                }
            };
            let unchanged = self
                .get(&name)
                .is_some_and(|p| p.sha256 == stored.sha256 && p.manifest == manifest && p.recorded_grant == recorded);
            if unchanged {
                continue;
            }
            match self.load_blocking(manifest, stored.wasm, Source::Uploaded, recorded).await {
                Ok(p) => {
                    self.insert(p);
                }
                Err(e) => {
                    // Whatever was loaded under this name no longer matches
                    // the database (a grant withdrawn, say): keeping it would
                    // keep what it was given.
                    if self.get(&name).is_some_and(|p| p.source == Source::Uploaded) {
                        self.remove_uploaded(&name);
                    }
                    tracing::error!("skipping an uploaded plugin: {e}");
                }
            }
        }
        Ok(())
    }

    /// Loads a plugin on a blocking thread (compiling can take a while).
    pub async fn load_blocking(
        &self,
        manifest: Manifest,
        wasm: Vec<u8>,
        source: Source,
        recorded: Option<super::manifest::Grant>,
    ) -> Result<Plugin, LoadError> {
        let rt = self.runtime.clone();
        let name = manifest.name.clone();
        tokio::task::spawn_blocking(move || rt.load(manifest, &wasm, source, recorded.as_ref()))
            .await
            .unwrap_or_else(|e| Err(LoadError { name, reason: format!("loading panicked: {e}") }))
    }

    fn insert_base(&self, plugin: Plugin) {
        let plugin = Arc::new(plugin);
        self.base.write().expect("registry lock").insert(plugin.name().to_owned(), plugin.clone());
        self.plugins.write().expect("registry lock").insert(plugin.name().to_owned(), plugin);
    }

    /// Adds or replaces a plugin; returns the one it replaced.
    pub fn insert(&self, plugin: Plugin) -> Option<Arc<Plugin>> {
        let name = plugin.name().to_owned();
        tracing::info!(plugin = %name, kind = plugin.kind().as_str(), sha256 = %plugin.sha256, source = ?plugin.source, "plugin loaded");
        self.plugins.write().expect("registry lock").insert(name, Arc::new(plugin))
    }

    /// Removes an uploaded plugin; a bundled or directory plugin of the same
    /// name takes its place again.
    pub fn remove_uploaded(&self, name: &str) {
        let fallback = self.base.read().expect("registry lock").get(name).cloned();
        let mut plugins = self.plugins.write().expect("registry lock");
        match fallback {
            Some(p) => plugins.insert(name.to_owned(), p),
            None => plugins.remove(name),
        };
    }

    /// The plugin with this name.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().expect("registry lock").get(name).cloned()
    }

    /// The plugin with this name, if it is of this kind.
    pub fn require(&self, name: &str, kind: Kind) -> Result<Arc<Plugin>, LookupError> {
        let plugin = self.get(name).ok_or_else(|| LookupError::Unknown { name: name.to_owned() })?;
        if plugin.kind() != kind {
            return Err(LookupError::WrongKind {
                name: name.to_owned(),
                actual: plugin.kind().as_str(),
                wanted: kind.as_str(),
            });
        }
        Ok(plugin)
    }

    /// Every plugin, by name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.plugins.read().expect("registry lock").values().cloned().collect()
    }

    /// True if a bundled or directory plugin has this name.
    pub fn is_base(&self, name: &str) -> bool {
        self.base.read().expect("registry lock").contains_key(name)
    }

    /// Runs a synchronous plugin call on a blocking thread.
    pub async fn blocking<R: Send + 'static>(&self, f: impl FnOnce(&Runtime) -> R + Send + 'static) -> R {
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || f(&rt)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Registry {
    /// Runs a synchronous plugin call on a thread that gets the CPU only
    /// when nothing else of the machine wants it (`SCHED_IDLE`; niceness 19
    /// where that is refused): for work that may wait, such as matching a
    /// backlog while deliveries are being acknowledged. One call at a time;
    /// a call that panics fails alone.
    pub async fn idle<R: Send + 'static>(&self, f: impl FnOnce(&Runtime) -> R + Send + 'static) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: IdleJob = Box::new(move |rt| {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(rt))));
        });
        let lane = self.idle.get_or_init(|| {
            let (lane, jobs) = std::sync::mpsc::channel::<IdleJob>();
            let rt = self.runtime.clone();
            let started = std::thread::Builder::new().name("plugin-idle".into()).spawn(move || {
                if let Err(e) = crate::sandbox::idle_thread_priority() {
                    tracing::warn!(error = %e, "the idle plugin thread keeps its priority");
                }
                while let Ok(job) = jobs.recv() {
                    job(&rt);
                }
            });
            if let Err(e) = started {
                // The jobs sent go nowhere and come back (below).
                tracing::warn!(error = %e, "cannot start the idle plugin thread; its calls use the blocking pool");
            }
            lane
        });
        let job = match lane.send(job) {
            Ok(()) => None,
            Err(std::sync::mpsc::SendError(job)) => Some(job),
        };
        if let Some(job) = job {
            let rt = self.runtime.clone();
            let _ = tokio::task::spawn_blocking(move || job(&rt)).await;
        }
        match rx.await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the idle plugin call was dropped unanswered"),
        }
    }
}

/// Reads `<name>.wasm` + `<name>.toml` pairs from a directory.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<(Manifest, Vec<u8>)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(anyhow::anyhow!("cannot read the plugins directory {}: {e}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let manifest_path = path.with_extension("toml");
        let manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => match toml::from_str::<Manifest>(&text) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("skipping {}: bad manifest {}: {e}", path.display(), manifest_path.display());
                    continue;
                }
            },
            Err(_) => {
                tracing::error!("skipping {}: no manifest beside it ({})", path.display(), manifest_path.display());
                continue;
            }
        };
        out.push((manifest, std::fs::read(&path)?));
    }
    Ok(out)
}
