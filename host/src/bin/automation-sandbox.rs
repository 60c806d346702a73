//! `automation-sandbox`: the local sandbox's launcher as a small binary of
//! its own, installed next to `automation-host`. The host starts one per
//! sandboxed process (see `sandbox/launcher.rs`); a binary that links only
//! the launcher starts in a fraction of the time the whole host binary
//! takes to load. Without it the host re-executes itself in the same mode.

fn main() {
    automation_host::sandbox::launcher::main()
}
