#!/usr/bin/env bash
# Whole-program comparison of `svm scan` with clamscan, clamd, yara and yara-x, in one run, on
# the workload of ../shared/bench (a ~490 MB corpus from /usr, 20,000 SHA-256 + 5,000 body
# signatures in ClamAV and YARA form, planted samples and ground truth).
#
#   ANCHORS=/var/tmp/bench-work bench/run.sh            # everything
#   PHASES="yrx clamd" ANCHORS=... bench/run.sh          # peers subset (svm always runs)
#
# Prerequisites are built once into $ANCHORS like ../shared/bench/run_all.sh does (apt
# packages, the yara-x CLI `yr` — about 20 minutes on 2 cores —, corpus and signatures).
# Results: $ANCHORS/results/results.jsonl and tables.md (medians of $REPS runs, default 3).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
A=${ANCHORS:-/var/tmp/bench-work}
export ANCHORS=$A
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
mkdir -p "$A"

if ! command -v clamscan >/dev/null || ! command -v yara >/dev/null || [ ! -d /usr/share/clamav-testfiles ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y clamav clamav-daemon clamav-testfiles yara hyperfine
fi
if [ ! -x "$A/yrx/inst/bin/yr" ]; then
  mkdir -p "$A/yrx"
  CARGO_TARGET_DIR="$A/yrx/target" cargo install yara-x-cli --locked --root "$A/yrx/inst" > "$A/yrx/build.log" 2>&1
fi
[ -f "$A/benign_manifest.tsv" ] || python3 "$SHARED/make_corpus.py" "$A"
[ -f "$A/ground_truth.csv" ] || python3 "$SHARED/gen_sigs.py" "$A"
: > "$A/empty.bin"

# The svm binary under test, copied so rebuilds during the run do not change it.
(cd "$REPO" && cargo build --release --workspace)
mkdir -p "$A/svm-bin" "$A/sigs/clamav-body"
cp "$CARGO_TARGET_DIR/release/svm" "$A/svm-bin/svm"
cp "$A/sigs/clamav/anchors.ndb" "$A/sigs/clamav-body/"
SVM="$A/svm-bin/svm"

rm -rf "$A/results"; mkdir -p "$A/results"
PHASES=${PHASES:-refs yrx yara clamscan clamd}
export CLAMD_COMBOS=${CLAMD_COMBOS:-2:multiscan,2:multiscan-fdpass,2:fdpass}
python3 "$SHARED/bench.py" $PHASES | tee "$A/results/run_all.log"
CUSTOM_NAME=svm CUSTOM_FMT=clamav \
  CUSTOM_CMD="$SVM scan -i --no-summary --threads {threads} -d {sigs}/clamav {corpus}" \
  CUSTOM_LOAD="$SVM scan --no-summary -d {sigs}/clamav {empty}" \
  python3 "$SHARED/bench.py" custom | tee -a "$A/results/run_all.log"
CUSTOM_NAME=svm-body CUSTOM_FMT=clamav \
  CUSTOM_CMD="$SVM scan -i --no-summary --threads {threads} -d {sigs}/clamav-body {corpus}" \
  CUSTOM_LOAD="$SVM scan --no-summary -d {sigs}/clamav-body {empty}" \
  python3 "$SHARED/bench.py" custom | tee -a "$A/results/run_all.log"
python3 "$SHARED/report.py" > "$A/results/tables.md"
cat "$A/results/tables.md"
