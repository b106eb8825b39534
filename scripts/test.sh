#!/usr/bin/env bash
# capfilt's whole test suite, as CI runs it: set-up (idempotent), formatting, lints, Rust tests,
# docs, and the Python tests against the built binary.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

step() { printf '\n== %s ==\n' "$*"; }

step "set-up"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "pytest"
cargo build -p capfilt --locked --quiet
CAPFILT_BIN="$repo/target/debug/capfilt" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python trainer/tests
