#!/usr/bin/env bash
# Signature load and scan at the scale of ClamAV's full database (6.65M SHA-256 + 200k body
# signatures from ../shared/bench/gen_scale.py): svm against clamscan, medians of $REPS runs.
#   ANCHORS=/var/tmp/bench-work bench/scale.sh        (needs bench/run.sh's corpus)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
A=${ANCHORS:-/var/tmp/bench-work}
REPS=${REPS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
[ -f "$A/scale-db/scale.hsb" ] || python3 "$SHARED/gen_scale.py" "$A/scale-db"
(cd "$REPO" && cargo build --release --workspace -q)
SVM="$CARGO_TARGET_DIR/release/svm"
: > "$A/empty.bin"
cat "$A"/scale-db/* > /dev/null   # page cache, as for the peers

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # label, command...
  local label=$1; shift
  local walls=() rss=()
  for _ in $(seq "$REPS"); do
    /usr/bin/time -f '%e %M' -o /tmp/scale.time "$@" > /dev/null 2>&1 || true
    read -r w m < /tmp/scale.time
    walls+=("$w"); rss+=("$m")
  done
  printf '%-34s wall %6ss  peak RSS %6s MiB  (runs: %s)\n' "$label" \
    "$(printf '%s\n' "${walls[@]}" | median)" \
    "$(( $(printf '%s\n' "${rss[@]}" | median) / 1024 ))" "${walls[*]}"
}
measure "svm load (sigs info)" "$SVM" sigs info -d "$A/scale-db"
measure "svm load (scan empty file)" "$SVM" scan --no-summary -d "$A/scale-db" "$A/empty.bin"
measure "clamscan load (scan empty file)" clamscan --no-summary -d "$A/scale-db" "$A/empty.bin"
measure "svm scan corpus, 2 threads" "$SVM" scan -i --no-summary --threads 2 -d "$A/scale-db" "$A/corpus"
bytes=$(du -sb "$A/corpus" | cut -f1)
echo "corpus bytes: $bytes"
