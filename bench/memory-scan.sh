#!/usr/bin/env bash
# Full-RAM scan throughput: `svm scan-memory` against `yr scan` (yara-x) and `yara` on the
# same raw dump with the same body rules, in one run (hyperfine, median of REPS).
#
#   ANCHORS=/var/tmp/bench-work bench/memory-scan.sh            # SIZE=1G by default
#   SIZE=4G RAMFILE=/path/to/guest.ram bench/memory-scan.sh
#
# The dump is dense: the benign corpus of ../shared/bench (built by bench/run.sh into
# $ANCHORS), each pass shifted by a few bytes so that pages do not repeat, plus one real
# guest's RAM file when RAMFILE is given. The rules are the bench's body signatures:
# $ANCHORS/sigs/clamav-body/anchors.ndb for svm and the same patterns as YARA rules
# ($ANCHORS/sigs/yara/body.yar) for yr and yara. The script prints the dump's zero and
# duplicate page shares (svm scan-memory does not dedup pages: this is the "dedup off" figure).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
A=${ANCHORS:-/var/tmp/bench-work}
SIZE=${SIZE:-1G}
REPS=${REPS:-3}
THREADS=${THREADS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
SVM=${SVM:-$CARGO_TARGET_DIR/release/svm}
YR=${YR:-$A/yrx/inst/bin/yr}
W=${WORK:-/var/tmp/memory-scan}
mkdir -p "$W"
for f in "$A/sigs/clamav-body/anchors.ndb" "$A/sigs/yara/body.yar" "$A/corpus"; do
  [ -e "$f" ] || { echo "missing $f: run bench/run.sh first (it builds \$ANCHORS)" >&2; exit 1; }
done
command -v hyperfine >/dev/null && command -v yara >/dev/null && [ -x "$YR" ] && [ -x "$SVM" ] || {
  echo "needs hyperfine, yara, $YR and $SVM" >&2; exit 1; }

DUMP="$W/dense-$SIZE.raw"
if [ ! -f "$DUMP" ]; then
  python3 - "$A/corpus" "$DUMP" "$SIZE" "${RAMFILE:-}" <<'PY'
import os, sys
corpus, out, size, ram = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
n = int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(corpus) for f in fs)
with open(out, "wb") as o:
    left = n
    if ram:
        with open(ram, "rb") as r:
            b = r.read(left)
            o.write(b)
            left -= len(b)
    shift = 0
    while left > 0:
        o.write(b"\x00" * min(shift, left)); left -= min(shift, left)
        for f in files:
            if left <= 0:
                break
            with open(f, "rb") as r:
                b = r.read(left)
            o.write(b); left -= len(b)
        shift += 7
PY
fi
python3 - "$DUMP" <<'PY'
import hashlib, sys
seen, zero, dup, n = set(), 0, 0, 0
z = bytes(4096)
with open(sys.argv[1], "rb") as f:
    while True:
        p = f.read(4096)
        if not p:
            break
        n += 1
        if p == z[:len(p)]:
            zero += 1
            continue
        h = hashlib.blake2b(p, digest_size=16).digest()
        if h in seen:
            dup += 1
        else:
            seen.add(h)
print(f"dump: {n} pages; zero pages {100*zero/n:.1f}%; duplicate non-zero pages {100*dup/n:.1f}%")
PY
echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), kernel $(uname -r)"
echo "versions: $("$SVM" --version), $("$YR" --version 2>&1 | head -1), yara $(yara --version)"
# Every tool must find the same planted anchors (exit codes differ: only timing is compared).
hyperfine -N --warmup 1 --runs "$REPS" --export-json "$W/hyperfine.json" \
  -n svm "$SVM scan-memory --threads $THREADS -d $A/sigs/clamav-body/anchors.ndb $DUMP" \
  -n yr "$YR scan -p $THREADS $A/sigs/yara/body.yar $DUMP" \
  -n yara "yara -p $THREADS $A/sigs/yara/body.yar $DUMP" \
  -i | tee "$W/hyperfine.txt"
python3 - "$W/hyperfine.json" "$DUMP" <<'PY'
import json, os, statistics, sys
r = json.load(open(sys.argv[1]))["results"]
size = os.path.getsize(sys.argv[2])
med = {x["command"]: statistics.median(x["times"]) for x in r}
print("\n| tool | median s | GB/s | svm speed-up |\n|---|---:|---:|---:|")
for k, t in med.items():
    print(f"| {k} | {t:.3f} | {size/t/1e9:.2f} | {t/med['svm']:.2f}x |")
PY
