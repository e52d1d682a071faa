#!/usr/bin/env bash
# Set up and run the main job on a fresh Debian machine: install the ClamAV test files (as a
# sample to scan), build svm, and scan with the signature set embedded in the binary.
#   scripts/scan-quickstart.sh [PATH...]     (default: /usr/share/clamav-testfiles)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_testfiles
cargo build --release --workspace
paths=("$@")
[ ${#paths[@]} -eq 0 ] && paths=(/usr/share/clamav-testfiles)
set +e
"$CARGO_TARGET_DIR/release/svm" scan --infected "${paths[@]}"
code=$?
echo "svm scan exit code: $code (0 clean, 1 found, 2 errors)"
exit 0
