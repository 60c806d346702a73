//! The one wasmtime `Engine`, its epoch ticker, and the on-disk compile cache.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Call deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest linear memory any plugin may have; per-kind limits are lower or
/// equal (see `limits`).
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

/// Core module instances one component may have. CPython built with
/// `componentize-py --stub-wasi` needs 38; the limit costs nothing until used
/// (the pool's total, `max_instances * 8`, is what is reserved).
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;

/// Builds the engine. `fuel` turns on fuel metering (the `plugin call` command
/// uses it to report instructions; the server does not, see BENCHMARKS.md).
///
/// Choices, each measured in BENCHMARKS.md:
/// - the pooling allocator with copy-on-write memory images: instantiating
///   from an `InstancePre` then maps a prepared slot instead of building one;
/// - `concurrency_support(false)`: the component-model async machinery costs
///   about a microsecond per call and no plugin here uses it;
/// - epoch interruption rather than fuel for deadlines: a counter check at
///   loop heads instead of fuel accounting on every block.
///
/// `AUTOMATION_WASM_PERF_MAP=1` (a profiling aid, not a setting) writes
/// `/tmp/perf-<pid>.map`, so `perf report` names the functions of plugins'
/// compiled code instead of showing bare addresses.
pub fn build(fuel: bool, max_instances: u32) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .concurrency_support(false)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .memory_init_cow(true)
        .parallel_compilation(true);
    if std::env::var_os("AUTOMATION_WASM_PERF_MAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 4)
        .total_stacks(max_instances)
        .max_memory_size(MAX_MEMORY_BYTES)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10)
        .max_unused_warm_slots(max_instances.min(64));
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own,
/// until the engine is dropped.
pub fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot start the epoch ticker thread");
}

/// Precompiled components on disk, keyed by the component's SHA-256 and the
/// engine's compatibility hash, so a restart loads in milliseconds and a
/// changed engine configuration (or wasmtime version) is a miss, not an error.
///
/// A cache entry is native code the host will run, so every entry is
/// authenticated: `MAGIC`, then an HMAC-SHA256 over the component digest,
/// the engine hash and the artifact, under a key the host keeps outside the
/// cache directory (see [`CacheKey`]). An entry whose tag does not verify
/// (planted, tampered, renamed from another component's entry, written by
/// another key or an older host) is refused, logged and recompiled; the
/// artifact is deserialized from the very bytes that were verified, never
/// re-read from the file.
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: u64,
    /// `None`: no key could be read or made, so nothing is read from or
    /// written to the cache (every load compiles).
    key: Option<CacheKey>,
}

/// First bytes of an authenticated cache entry.
const MAGIC: &[u8; 8] = b"AHCWASM1";
/// Length of the HMAC-SHA256 tag after [`MAGIC`].
const TAG_LEN: usize = 32;

/// The compile cache's authentication key: 32 random bytes, hex in a file
/// of mode 0600 (by default `<cache dir>.key`, beside the cache directory,
/// not in it). Made on first use; hosts sharing a cache share the file.
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// Reads the key at `path`, making it (0600, atomically) if it is absent.
    pub fn load_or_create(path: &Path) -> std::io::Result<CacheKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => return CacheKey::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        // A host starting at the same moment reads either no key or a whole
        // one, and the first one written wins: read back what is there.
        crate::secrets::write_new_key(path, &hex::encode(bytes))?;
        CacheKey::parse(path, &std::fs::read_to_string(path)?)
    }

    fn parse(path: &Path, text: &str) -> std::io::Result<CacheKey> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the compile cache key is readable by others; it should be 0600");
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a compile cache key (64 hex digits): {e}", path.display()),
            )
        })?;
        Ok(CacheKey(bytes))
    }
}

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a precompiled file.
    Hit,
    /// Compiled now (and written to the cache).
    Compiled,
}

impl CompileCache {
    /// A cache in `dir` for `engine`, authenticated with `key` (the directory
    /// is created, mode 0700, when needed).
    pub fn new(engine: &Engine, dir: PathBuf, key: Option<CacheKey>) -> CompileCache {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache { dir, engine_hash: h.finish(), key }
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{:016x}.cwasm", self.engine_hash))
    }

    fn tag(&self, key: &CacheKey, sha256: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
        mac.update(b"automation-host compile cache v1\0");
        mac.update(sha256.as_bytes());
        mac.update(format!("{:016x}", self.engine_hash).as_bytes());
        mac.update(artifact);
        mac
    }

    /// Loads a component: from the cache when an authentic entry exists, else
    /// by compiling it (and caching the result). A stale, damaged or
    /// unauthentic entry is a miss. Errors are about the component itself (not
    /// valid wasm, not a component, a precompiled artifact offered as source).
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        // `Runtime::load` has checked the magic already (`inspect`); this
        // guards other callers.
        if Engine::detect_precompiled(wasm).is_some() {
            wasmtime::bail!("precompiled artifacts (.cwasm) are not accepted; give the .wasm component");
        }
        let sha = hex::encode(Sha256::digest(wasm));
        let path = self.path_for(&sha);
        if let Some(key) = &self.key {
            match self.read_verified(engine, key, &sha, &path) {
                Ok(Some(c)) => return Ok((c, CacheOutcome::Hit)),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "compile cache entry refused; recompiling");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Some(key) = &self.key
            && let Err(e) = self.store(key, &sha, &path, &compiled)
        {
            // A read-only or full disk costs start-up time, not correctness.
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
        }
        #[allow(unsafe_code)]
        // SAFETY: `compiled` came from `precompile_component` on this engine just now.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }

    /// The entry at `path` if there is one and it is authentic; `Err` says
    /// why an entry that exists cannot be used.
    fn read_verified(
        &self,
        engine: &Engine,
        key: &CacheKey,
        sha: &str,
        path: &Path,
    ) -> Result<Option<Component>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            return Err("not an authenticated entry (planted, or written by an older host)".to_owned());
        };
        if rest.len() < TAG_LEN {
            return Err("truncated".to_owned());
        }
        let (tag, artifact) = rest.split_at(TAG_LEN);
        self.tag(key, sha, artifact).verify_slice(tag).map_err(|_| {
            "its authentication tag does not match (tampered, renamed from another component, or made with another key)"
                .to_owned()
        })?;
        #[allow(unsafe_code)]
        // SAFETY: the bytes are exactly those this host (or one holding the
        // same key) wrote from `Engine::precompile_component` for this
        // component digest and engine configuration: the HMAC over them
        // verified above, and they are used from memory, not re-read.
        // wasmtime also checks the header and engine configuration.
        let component = unsafe { Component::deserialize(engine, artifact) };
        component.map(Some).map_err(|e| format!("wasmtime refused it: {e}"))
    }

    fn store(&self, key: &CacheKey, sha: &str, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let tag = self.tag(key, sha, artifact).finalize().into_bytes();
        // Write then rename: a reader never sees half a file, and two hosts
        // sharing a data directory write identical bytes.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&tag)?;
        f.write_all(artifact)?;
        drop(f);
        std::fs::rename(&tmp, path)
    }
}

/// Where the compile cache key lives unless configured: beside the cache
/// directory (`plugin-cache` -> `plugin-cache.key`), not in it.
pub fn default_key_file(cache_dir: &Path) -> PathBuf {
    let dir: PathBuf = cache_dir.components().collect();
    let mut name = dir.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// Opens the cache key for `cache_dir`, or says why the cache is off.
pub fn open_key(cache_dir: &Path, key_file: Option<&Path>) -> Option<CacheKey> {
    let path = key_file.map_or_else(|| default_key_file(cache_dir), Path::to_path_buf);
    match CacheKey::load_or_create(&path) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no compile cache key; plugins compile at every load");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Engine, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = build(false, 4).unwrap();
        // The smallest component, `(component)`: magic, version 0xd, layer 1.
        let wasm = b"\0asm\x0d\0\x01\0".to_vec();
        (dir, engine, wasm)
    }

    #[test]
    fn the_key_file_sits_beside_the_cache_directory() {
        assert_eq!(default_key_file(Path::new("/d/plugin-cache/")), PathBuf::from("/d/plugin-cache.key"));
        assert_eq!(default_key_file(Path::new("cache")), PathBuf::from("cache.key"));
    }

    #[test]
    fn a_key_is_made_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let a = CacheKey::load_or_create(&path).unwrap();
        let b = CacheKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "not hex").unwrap();
        assert!(CacheKey::load_or_create(&path).is_err());
    }

    #[test]
    fn only_authentic_entries_are_loaded() {
        let (dir, engine, wasm) = setup();
        let cache_dir = dir.path().join("cache");
        let key = CacheKey::load_or_create(&dir.path().join("cache.key")).unwrap();
        let cache = CompileCache::new(&engine, cache_dir.clone(), Some(key));
        assert_eq!(cache.load(&engine, &wasm).unwrap().1, CacheOutcome::Compiled);
        assert_eq!(cache.load(&engine, &wasm).unwrap().1, CacheOutcome::Hit);
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let path = cache.path_for(&hex::encode(Sha256::digest(&wasm)));
        let good = std::fs::read(&path).unwrap();
        // Tampered artifact, tampered tag, raw wasmtime artifact, truncated.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut bad_tag = good.clone();
        bad_tag[MAGIC.len()] ^= 1;
        let raw = engine.precompile_component(&wasm).unwrap();
        for planted in [flipped, bad_tag, raw, good[..20].to_vec()] {
            std::fs::write(&path, &planted).unwrap();
            assert_eq!(cache.load(&engine, &wasm).unwrap().1, CacheOutcome::Compiled);
            assert_eq!(std::fs::read(&path).unwrap(), good, "the refused entry is replaced by an authentic one");
        }
        // Another key refuses this one's entries.
        let other = CacheKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let stranger = CompileCache::new(&engine, cache_dir, Some(other));
        assert_eq!(stranger.load(&engine, &wasm).unwrap().1, CacheOutcome::Compiled);
        // Without a key nothing is read or written.
        let off = CompileCache::new(&engine, dir.path().join("off"), None);
        assert_eq!(off.load(&engine, &wasm).unwrap().1, CacheOutcome::Compiled);
        assert!(!dir.path().join("off").exists());
    }
}
