#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CI="${CI:-true}"   # insta: fail on a changed snapshot instead of writing a new one
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# nextest runs each test in its own process (tests that fork, ptrace or unshare need that) and
# ends with one summary line; plain cargo test is the fallback where nextest is missing.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
