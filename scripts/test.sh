#!/usr/bin/env bash
# The project's tests: formatting, lints, and every unit, property and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
# Real parts the tests use: the ClamAV test files (clam.exe) come from Debian.
ensure_testfiles
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# The Xen source (feature `xen`) runs only on a Xen host: here it is compile-checked, against
# the Xen bindings shipped with libxen-sys (no Xen headers or libraries needed). Cargo.lock keeps
# prettyplease on the syn major that bindgen 0.73 resolves to (now 0.3 with syn 3), or bindgen fails.
XEN_SYS_USE_BINDINGS=1 cargo clippy -p hypervisor-api --features xen --all-targets --release -- -D warnings
# The end-to-end tests run the real binaries (svm, svm-agent): `cargo test` does not build a
# binary for another package's tests, so build them here, never test a stale one.
cargo build --workspace --release
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line over every test binary and doc-test run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
