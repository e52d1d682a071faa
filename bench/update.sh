#!/usr/bin/env bash
# Signature updates at 100,000 signatures (80k SHA-256 hashes + 20k body signatures, cut from
# the scale set of ../shared/bench/gen_scale.py): svm's bundle verify + compile time, the time
# and memory of a hot swap in `svm serve` (verdict cache empty), against clamd's RELOAD of the
# same signatures in ClamAV format (time to "Database correctly reloaded", RSS during it).
# Medians of REPS.
#   ANCHORS=/var/tmp/bench-work bench/update.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
A=${ANCHORS:-/var/tmp/bench-work}
REPS=${REPS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
SVM="$CARGO_TARGET_DIR/release/svm"
W=${WORK:-/var/tmp/bench-update}
[ -f "$A/scale-db/scale.hsb" ] || python3 "$SHARED/gen_scale.py" "$A/scale-db"
[ -x "$SVM" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
command -v clamd >/dev/null || { echo "needs clamd (apt-get install clamav-daemon)" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W"/{v2,v3,v3b,s2,s3,clamdb,state}
# ClamAV's layout: a large main part that rarely changes, a small daily part that every update
# replaces (here 90% / 10% of each kind). v3 adds one hash to daily.hsb; v3b one body signature
# to daily.ndb. s2/s3: the same 100k signatures in one file per kind, s3 adding the one hash.
head -n 72000 "$A/scale-db/scale.hsb" > "$W/v2/main.hsb"
sed -n '72001,80000p' "$A/scale-db/scale.hsb" > "$W/v2/daily.hsb"
head -n 18000 "$A/scale-db/scale.ndb" > "$W/v2/main.ndb"
sed -n '18001,20000p' "$A/scale-db/scale.ndb" > "$W/v2/daily.ndb"
EXTRA_HASH="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Bench.Extra"
EXTRA_BODY="Bench.Extra.Body:0:*:62656e63682d65787472612d626f6479"
cp "$W"/v2/* "$W/v3/" && echo "$EXTRA_HASH" >> "$W/v3/daily.hsb"
cp "$W"/v2/* "$W/v3b/" && echo "$EXTRA_BODY" >> "$W/v3b/daily.ndb"
head -n 80000 "$A/scale-db/scale.hsb" > "$W/s2/scale.hsb"
head -n 20000 "$A/scale-db/scale.ndb" > "$W/s2/scale.ndb"
cp "$W"/s2/* "$W/s3/" && echo "$EXTRA_HASH" >> "$W/s3/scale.hsb"
cp "$W"/v2/* "$W/clamdb/"
"$SVM" sigs keygen -o "$W/pub" >/dev/null
for v in v2 v3 v3b s2 s3; do
  n=${v#?}; n=${n%b}
  "$SVM" sigs build "$W/$v" --set-version "$n" -o "$W/$v.svmb" >/dev/null
  "$SVM" sigs sign "$W/$v.svmb" --key "$W/pub.key" >/dev/null
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), kernel $(uname -r)"
echo "set: 80,000 SHA-256 + 20,000 body signatures; bundle $(stat -c %s "$W/v2.svmb") bytes"

# 1. verify + compile (what the daemon does before a swap), offline.
t=()
for _ in $(seq "$REPS"); do
  s=$(now); "$SVM" sigs verify "$W/v2.svmb" --trust "$W/pub.pub" >/dev/null; e=$(now)
  t+=("$(echo "$e - $s" | bc)")
done
echo "svm sigs verify (verify + compile): median $(printf '%s\n' "${t[@]}" | median) s (runs: ${t[*]})"

# 2. hot swap in svm serve: BASE pushed to a daemon on the default set, then NEXT over it.
cat > "$W/svm.toml" <<CFG
[update]
trusted_keys = ["$W/pub.pub"]
admin_socket = "$W/admin.sock"
CFG
push() { curl -s -o /dev/null -w '%{http_code}' --unix-socket "$W/admin.sock" --data-binary @"$1" http://svm/v1/signatures; }
swap() {
  local base=$1 next=$2 what=$3
  local swap_t=() base_r=() one_r=() peak_r=()
  for _ in $(seq "$REPS"); do
    "$SVM" serve --config "$W/svm.toml" --listen "$W/svm.sock" --metrics "" 2>"$W/serve.log" &
    pid=$!
    for _ in $(seq 100); do [ -S "$W/admin.sock" ] && curl -sf --unix-socket "$W/admin.sock" http://svm/v1/signatures >/dev/null && break; sleep 0.1; done
    b0=$(kib "$pid" VmRSS)
    [ "$(push "$W/$base.svmb")" = 200 ] || { echo "push $base failed" >&2; exit 1; }
    sleep 1
    one=$(kib "$pid" VmRSS)
    # The high-water mark from here on is the swap's alone.
    echo 5 > "/proc/$pid/clear_refs"
    s=$(now); code=$(push "$W/$next.svmb"); e=$(now)
    [ "$code" = 200 ] || { echo "push $next failed: $code" >&2; exit 1; }
    peak=$(kib "$pid" VmHWM)
    swap_t+=("$(echo "$e - $s" | bc)"); base_r+=("$b0"); one_r+=("$one"); peak_r+=("$peak")
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  b=$(printf '%s\n' "${base_r[@]}" | median); o=$(printf '%s\n' "${one_r[@]}" | median); p=$(printf '%s\n' "${peak_r[@]}" | median)
  echo "swap $base -> $next ($what): POST to swapped median $(printf '%s\n' "${swap_t[@]}" | median) s (runs: ${swap_t[*]})"
  echo "  RSS: default set $((b / 1024)) MiB; with the 100k set $((o / 1024)) MiB; peak during the swap $((p / 1024)) MiB"
  awk -v b="$b" -v o="$o" -v p="$p" 'BEGIN { printf "  set memory: steady %.1f MiB, peak during swap %.1f MiB: %.2fx one set\n", (o-b)/1024, (p-b)/1024, (p-b)/(o-b) }'
}
swap v2 v3 "main/daily, one hash added to daily.hsb"
swap v2 v3b "main/daily, one body signature added to daily.ndb"
swap s2 s3 "one file per kind, one hash added to it"

# 3. clamd RELOAD of the same signatures.
cat > "$W/clamd.conf" <<CFG
LocalSocket $W/clamd.sock
DatabaseDirectory $W/clamdb
LogFile $W/clamd.log
Foreground yes
TemporaryDirectory $W
CFG
rl_t=(); c_one=(); c_peak=()
for _ in $(seq "$REPS"); do
  : > "$W/clamd.log"
  clamd --config-file="$W/clamd.conf" >/dev/null 2>&1 &
  cpid=$!
  for _ in $(seq 600); do [ -S "$W/clamd.sock" ] && break; sleep 0.1; done
  sleep 1
  one=$(kib "$cpid" VmRSS)
  s=$(now)
  python3 - "$W/clamd.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"zRELOAD\0"); s.recv(100); s.close()
PY
  peak=$one
  until grep -q "Database correctly reloaded" "$W/clamd.log"; do
    r=$(kib "$cpid" VmRSS); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.01
  done
  e=$(now)
  rl_t+=("$(echo "$e - $s" | bc)"); c_one+=("$one"); c_peak+=("$peak")
  kill "$cpid"; wait "$cpid" 2>/dev/null || true
  rm -f "$W/clamd.sock"
done
echo "clamd RELOAD (to 'Database correctly reloaded'): median $(printf '%s\n' "${rl_t[@]}" | median) s (runs: ${rl_t[*]})"
echo "clamd RSS: with the set $(( $(printf '%s\n' "${c_one[@]}" | median) / 1024 )) MiB; peak during RELOAD (sampled every 10 ms) $(( $(printf '%s\n' "${c_peak[@]}" | median) / 1024 )) MiB"

# 4. The storm after an update (bench-storm: 100 guests x 500 files from /usr; boot 1 on v2,
#    then the update, then boot 2): a hash-only update (v3: one more hash) against one that
#    adds a body signature (v3b).
cat > "$W/storm.toml" <<CFG
[update]
trusted_keys = ["$W/pub.pub"]
admin_socket = "$W/storm-admin.sock"
CFG
for b in v3 v3b; do
  "$SVM" bench-storm --guests 100 --files 500 --reps "$REPS" --json --admin-socket "$W/storm-admin.sock" \
    --push "$W/$b.svmb" --push-between-boots -- --config "$W/storm.toml" -d "$W/v2" > "$W/storm-$b.json" 2>/dev/null
  python3 - "$W/storm-$b.json" "$b" <<'PY'
import json, statistics as st, sys
r = json.load(open(sys.argv[1]))["reps"]
m = lambda f: st.median(f(x) for x in r)
print(f"storm after update {sys.argv[2]}: boot 2 scans {m(lambda x: x['boot2_scans']):.0f}, cache hit ratio "
      f"{m(lambda x: x['boot2_cache_hit_ratio']):.3f}, p99 {m(lambda x: x['boot2']['p99_ms']):.2f} ms, "
      f"{m(lambda x: x['boot2']['per_second']):.0f} verdicts/s; boot 1 scans {m(lambda x: x['boot1_scans']):.0f}")
PY
done
