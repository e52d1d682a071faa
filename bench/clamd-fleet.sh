#!/usr/bin/env bash
# Host memory of the per-VM agent model against one security VM: N clamd instances, each
# loading the same signature set (as an agent in every VM would), against one `svm serve`
# loading that set. N instances are started one after another and measured once all are
# ready; N that would not fit in this machine's memory is extrapolated from the measured
# per-instance RSS and said so.
#   DB=/var/tmp/bench-work/scale-db NS="1 10" bench/clamd-fleet.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
DB=${DB:-/var/tmp/bench-work/scale-db}
NS=${NS:-"1 10"}
EXTRA=${EXTRA:-"50 440"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
(cd "$REPO" && cargo build --release --workspace -q)
SVM="$CARGO_TARGET_DIR/release/svm"
W=$(mktemp -d /var/tmp/clamd-fleet.XXXX)
trap 'pkill -f "clamd --config-file=$W" 2>/dev/null || true; rm -rf "$W"' EXIT
command -v clamd > /dev/null || { echo "clamd not installed (apt-get install clamav-daemon)"; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2> /dev/null || echo 0; }
mem_avail_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "signature set: $DB ($(du -sh "$DB" | cut -f1))"
per_clamd=0
for n in $NS; do
  pids=()
  before=$(mem_avail_kib)
  for i in $(seq "$n"); do
    d="$W/c$i"; mkdir -p "$d"
    cat > "$d/clamd.conf" << EOF
DatabaseDirectory $DB
LocalSocket $d/clamd.sock
Foreground yes
LogFile $d/clamd.log
TemporaryDirectory $d
MaxThreads 2
SelfCheck 0
EOF
    clamd --config-file="$d/clamd.conf" > /dev/null 2>&1 &
    pids+=($!)
    # One at a time: wait until this one answers PING.
    for _ in $(seq 600); do
      if [ -S "$d/clamd.sock" ] && python3 - "$d/clamd.sock" << 'PY' 2> /dev/null; then break; fi
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"zPING\0"); assert s.recv(16).startswith(b"PONG")
PY
      sleep 1
    done
  done
  total=0
  for p in "${pids[@]}"; do total=$((total + $(rss_kib "$p"))); done
  after=$(mem_avail_kib)
  per_clamd=$((total / n))
  printf 'clamd x %-4s RSS total %8.1f MiB (%.1f MiB each); host MemAvailable dropped %8.1f MiB\n' \
    "$n" "$(echo "$total/1024" | bc -l)" "$(echo "$per_clamd/1024" | bc -l)" "$(echo "($before-$after)/1024" | bc -l)"
  kill "${pids[@]}" 2> /dev/null || true
  wait "${pids[@]}" 2> /dev/null || true
done
for n in $EXTRA; do
  printf 'clamd x %-4s RSS total %8.1f MiB  (extrapolated: %s x the measured per-instance RSS; does not fit in this machine)\n' \
    "$n" "$(echo "$n*$per_clamd/1024" | bc -l)" "$n"
done
# One svm serve with the same set.
before=$(mem_avail_kib)
"$SVM" serve -d "$DB" --listen "$W/svm.sock" --metrics "" --audit-log "$W/audit.jsonl" 2> "$W/svm.log" &
spid=$!
for _ in $(seq 300); do grep -q "ready:" "$W/svm.log" && break; sleep 0.5; done
after=$(mem_avail_kib)
printf 'svm serve x 1 RSS       %8.1f MiB; host MemAvailable dropped %8.1f MiB (serves every guest)\n' \
  "$(echo "$(rss_kib $spid)/1024" | bc -l)" "$(echo "($before-$after)/1024" | bc -l)"
kill -TERM "$spid"; wait "$spid" || true
