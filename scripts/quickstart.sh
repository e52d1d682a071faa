#!/usr/bin/env bash
# Set up and run the main job on a fresh Debian machine: build svm, start the daemon
# `svm serve` with no arguments (embedded signature set, socket /run/svm/svm.sock, metrics on
# 127.0.0.1:9310), and act as a guest with `svm check`: EICAR is denied, clean files are
# allowed. Then show the metrics and the audit record, and stop the daemon with SIGTERM.
#   scripts/quickstart.sh [PATH...]     (extra files or directories to check)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_testfiles
command -v curl > /dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl > /dev/null; } || true
cargo build --release --workspace
SVM="$CARGO_TARGET_DIR/release/svm"
work=$(mktemp -d)
trap 'kill -TERM "$serve" 2>/dev/null; wait "$serve" 2>/dev/null; rm -rf "$work"' EXIT
# Terminal 1: the daemon, with no arguments. Its audit log goes to its standard error.
"$SVM" serve 2> "$work/serve.log" &
serve=$!
for _ in $(seq 100); do grep -q "ready:" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
cat "$work/serve.log"
# Terminal 2: a guest. EICAR is built here so no test virus is stored in the repository.
printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$work/eicar.com"
echo "hello" > "$work/clean.txt"
set +e
"$SVM" check "$work/eicar.com" "$work/clean.txt" /usr/share/clamav-testfiles/clam.exe "$@"
echo "svm check exit code: $? (0 clean, 1 infected, 2 error or unscanned)"
set -e
echo "--- metrics (excerpt) ---"
curl -s http://127.0.0.1:9310/metrics | grep -E '^svm_(events_total|scans_total|cache_hits_total|cache_misses_total) ' || true
curl -s http://127.0.0.1:9310/metrics | grep -E '^svm_events_total\{' || true
curl -s http://127.0.0.1:9310/healthz || true
kill -TERM "$serve"; wait "$serve" || true
echo "--- daemon log and audit records ---"
cat "$work/serve.log"
