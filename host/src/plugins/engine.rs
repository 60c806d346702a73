//! The one wasmtime `Engine`, its epoch ticker, and the on-disk compile cache.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Call deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest linear memory any plugin may have; per-kind limits are lower or
/// equal (see `limits`).
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

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
pub fn build(fuel: bool, max_instances: u32) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .concurrency_support(false)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .memory_init_cow(true)
        .parallel_compilation(true);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 4)
        .total_stacks(max_instances)
        .max_memory_size(MAX_MEMORY_BYTES)
        .max_core_instances_per_component(32)
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
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: u64,
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
    /// A cache in `dir` for `engine` (the directory is created when needed).
    pub fn new(engine: &Engine, dir: PathBuf) -> CompileCache {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache { dir, engine_hash: h.finish() }
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{:016x}.cwasm", self.engine_hash))
    }

    /// Loads a component: from the cache when a valid entry exists, else by
    /// compiling it (and caching the result). A stale or damaged entry is a
    /// miss. Errors are about the component itself (not valid wasm, not a
    /// component, a precompiled artifact offered as source).
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        if Engine::detect_precompiled(wasm).is_some() {
            wasmtime::bail!("precompiled artifacts (.cwasm) are not accepted; give the .wasm component");
        }
        let sha = hex::encode(Sha256::digest(wasm));
        let path = self.path_for(&sha);
        if path.exists() {
            match deserialize(engine, &path) {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "compile cache entry unusable; recompiling");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = self.store(&path, &compiled) {
            // A read-only or full disk costs start-up time, not correctness.
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
            #[allow(unsafe_code)]
            // SAFETY: `compiled` came from `precompile_component` on this engine just now.
            let component = unsafe { Component::deserialize(engine, &compiled)? };
            return Ok((component, CacheOutcome::Compiled));
        }
        Ok((deserialize(engine, &path)?, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Write then rename: a reader never sees half a file, and two hosts
        // sharing a data directory write identical bytes.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    #[allow(unsafe_code)]
    // SAFETY: only `CompileCache::store` writes this directory, with bytes from
    // `Engine::precompile_component`; wasmtime checks the header and the
    // engine configuration before using the file.
    unsafe {
        Component::deserialize_file(engine, path)
    }
}
