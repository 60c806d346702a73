# Everyday recipes. `just --list` shows them. Nothing here is required: the
# README's two commands (`cargo run --release`, `cargo test`) do all set-up.

set dotenv-load

# Run the service on SQLite in ./data (bundled plugins, nothing else needed).
run:
    cargo run --release

# Unit and end-to-end tests on SQLite and Postgres (Postgres must be running),
# then the guest plugins' own unit tests.
test:
    cargo test --locked
    cd guest-examples && cargo test --workspace --locked

# Only the Postgres variants of the end-to-end tests.
test-pg:
    cargo test --locked --test it postgres

# The end-to-end tests on SQLite only (for machines without Postgres).
test-sqlite:
    AUTOMATION_TEST_SKIP_POSTGRES=1 cargo test --locked

# Clippy with warnings as errors, and a formatting check (host and guests).
lint:
    cargo clippy --all-targets --locked -- -D warnings
    cargo fmt --all -- --check
    cd guest-examples && cargo clippy --release --target wasm32-wasip2 --all-targets --locked -- -D warnings
    cd guest-examples && cargo fmt --all -- --check

# Format everything.
fmt:
    cargo fmt --all

# Build the guest plugins to wasm32-wasip2 (host/build.rs also does this).
guests:
    rustup target add wasm32-wasip2
    cd guest-examples && cargo build --release --target wasm32-wasip2

# Run the benchmarks (micro, then the load driver) and rewrite BENCHMARKS.md.
bench:
    cargo bench --bench micro
    cargo bench --bench load

# Start the local Postgres cluster if it is down.
db-up:
    pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start

# CI, exactly as it runs on a clean clone.
ci:
    .ci/run
