//! Builds the guest plugins in `guest-examples/` to wasm32-wasip2 components
//! and tells the host where they are (`GUEST_WASM_DIR`), so `cargo run` and
//! `cargo test` need no separate step.
//!
//! It adds the `wasm32-wasip2` target with rustup when it is missing (these
//! machines do not auto-install), then runs a nested
//! `cargo build --release --target wasm32-wasip2` in the guest workspace,
//! which has its own target directory (so no lock is shared with this build).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let guests = root.join("guest-examples");
    watch(&root.join("wit"));
    watch_guest_sources(&guests);

    println!("cargo:rerun-if-env-changed=AUTOMATION_SKIP_GUEST_BUILD");
    let wasm_dir = guests.join("target/wasm32-wasip2/release");
    // An escape hatch for working on the host while a guest is half-edited:
    // reuse the components already built.
    if std::env::var("AUTOMATION_SKIP_GUEST_BUILD").is_ok_and(|v| v == "1") && wasm_dir.exists() {
        println!("cargo:warning=AUTOMATION_SKIP_GUEST_BUILD=1: using the guest components already built");
        println!("cargo:rustc-env=GUEST_WASM_DIR={}", wasm_dir.display());
        return;
    }
    ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests).args(["build", "--release", "--locked", "--target", "wasm32-wasip2"]);
    // The outer build's settings (flags, profile, jobserver, target dir) are
    // for the host, not for the guests.
    for (key, _) in std::env::vars() {
        let host_only = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if host_only {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("cannot run cargo to build the guest plugins");
    if !status.success() {
        panic!("building the guest plugins in guest-examples/ failed (see the output above)");
    }
    println!("cargo:rustc-env=GUEST_WASM_DIR={}", wasm_dir.display());
}

/// Adds the wasm32-wasip2 standard library if this toolchain lacks it.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().expect("cannot run rustc");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").exists() {
        return;
    }
    let toolchain = sysroot.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut add = Command::new("rustup");
    add.args(["target", "add", "wasm32-wasip2"]);
    if let Some(t) = &toolchain {
        add.args(["--toolchain", t]);
    }
    let ok = add.status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        panic!("the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; install it by hand");
    }
}

/// Re-runs this script when a guest's sources change (not its target dir).
fn watch_guest_sources(guests: &Path) {
    for name in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(name).display());
    }
    let mut dirs = vec![guests.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() || path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            if path.join("Cargo.toml").exists() {
                for part in ["Cargo.toml", "src", "wit", "plugin.toml"] {
                    let p = path.join(part);
                    if p.exists() {
                        watch(&p);
                    }
                }
            } else {
                dirs.push(path);
            }
        }
    }
}

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}
