#!/usr/bin/env bash
# The project's tests: formatting, lints, and every unit, property and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
# Real parts the tests use: the ClamAV test files (clam.exe) come from Debian.
if [ "$(id -u)" = 0 ] && [ ! -d /usr/share/clamav-testfiles ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clamav-testfiles >/dev/null
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
