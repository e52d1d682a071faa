#!/usr/bin/env bash
# Host-wide page dedup of the memory sweepers: K guests booted from one image, swept by one
# `svm serve`, against one guest alone (the "8 x one guest" baseline), in one run.
#
#   bench/memory-dedup.sh                 # K=8 MEM=256M SETTLE=60
#
# For each of the two runs: start svm serve with one [[vm]] per guest (qemu_ram, 1 s rounds,
# the default 25% CPU cap per sweeper), boot the guests (QEMU TCG, the test image's `idle`
# role, RAM in /dev/shm via memory-backend-file), wait until every guest printed its idle
# line, let the sweepers run SETTLE more seconds, then read the sweep counters from /metrics.
# Reports pages scanned (the cost dedup saves), hashed and deduped, and the sweepers' CPU
# time (from /proc: the svm-mem-* threads' utime+stime).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
K=${K:-8}
MEM=${MEM:-256M}
SETTLE=${SETTLE:-60}
PORT=${PORT:-19517}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
SVM=$CARGO_TARGET_DIR/release/svm
AGENT=$CARGO_TARGET_DIR/release/svm-agent
W=${WORK:-/var/tmp/memory-dedup}
SHM=/dev/shm/svm-memory-dedup
[ -x "$SVM" ] && [ -x "$AGENT" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "needs qemu-system-x86_64" >&2; exit 1; }
mkdir -p "$W" "$SHM"
"$REPO/scripts/guest-image.sh" "$W/img" "$AGENT" >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$SHM"
}
trap cleanup EXIT

metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }

# sweeper CPU seconds of process $1 (threads named svm-mem-*)
sweep_cpu() {
  local tck; tck=$(getconf CLK_TCK)
  for t in /proc/"$1"/task/*; do
    if grep -q '^svm-mem-' "$t/comm" 2>/dev/null; then
      awk '{ print $14 + $15 }' "$t/stat"
    fi
  done | awk -v t="$tck" '{ s += $1 } END { printf "%.1f", s / t }'
}

run() {
  local n=$1 dir=$W/run-$1
  rm -rf "$dir" && mkdir -p "$dir"
  rm -f "$SHM"/*
  {
    printf '[server]\nsweep_interval_ms = 1000\n'
    for i in $(seq 1 "$n"); do
      printf '[[vm]]\nname = "g%d"\nqemu_ram = "%s/g%d.ram"\n' "$i" "$SHM" "$i"
    done
  } >"$dir/svm.toml"
  "$SVM" serve --config "$dir/svm.toml" --listen "$dir/svm.sock" --metrics "127.0.0.1:$PORT" \
    2>"$dir/svm.log" &
  local svm_pid=$!
  pids+=("$svm_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/metrics" >/dev/null && break; sleep 0.1; done
  for i in $(seq 1 "$n"); do
    qemu-system-x86_64 -machine q35,accel=tcg,memory-backend=mem -cpu max -smp 1 -m "$MEM" \
      -object "memory-backend-file,id=mem,size=$MEM,mem-path=$SHM/g$i.ram,share=on" \
      -kernel "$W/img/vmlinuz" -initrd "$W/img/initrd.gz" \
      -append "console=ttyS0 panic=-1 quiet svm.role=idle" \
      -display none -monitor none -no-reboot -serial "file:$dir/g$i.serial" >/dev/null 2>&1 &
    pids+=("$!")
  done
  local t0=$SECONDS
  for i in $(seq 1 "$n"); do
    until grep -q 'SVM-GUEST: idle' "$dir/g$i.serial" 2>/dev/null; do
      (( SECONDS - t0 < 900 )) || { echo "guest g$i never became idle" >&2; exit 1; }
      sleep 1
    done
  done
  local booted=$((SECONDS - t0))
  # Steady state: the settle window's share of the counters.
  local s0 r0 c0
  s0=$(metric svm_memory_pages_scanned_total)
  r0=$(metric svm_memory_sweep_rounds_total)
  c0=$(sweep_cpu "$svm_pid")
  sleep "$SETTLE"
  local scanned hashed deduped rounds cpu
  scanned=$(metric svm_memory_pages_scanned_total)
  hashed=$(metric svm_memory_pages_hashed_total)
  deduped=$(metric svm_memory_pages_deduped_total)
  rounds=$(metric svm_memory_sweep_rounds_total)
  cpu=$(sweep_cpu "$svm_pid")
  printf '| %d | %s | %s | %s | %s | %s | %s s | %s s |\n' \
    "$n" "$scanned" "$hashed" "$deduped" "$rounds" "$(( scanned / n ))" "$booted" "$cpu"
  awk -v n="$n" -v s="$((scanned - s0))" -v r="$((rounds - r0))" -v c0="$c0" -v c="$cpu" \
    -v t="$SETTLE" 'BEGIN { printf "steady %d: per guest and round %.1f pages scanned; sweepers %.1f%% of one CPU per guest\n",
      n, s / (r > 0 ? r : 1), 100 * (c - c0) / t / n }' >>"$W/steady.txt"
  echo "$scanned" >"$dir/scanned"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), kernel $(uname -r)"
echo "guests: $MEM each, QEMU TCG, idle role; sweep 1 s rounds; measured ${SETTLE} s after the last guest is idle"
echo
echo "| guests | pages scanned | pages hashed | pages deduped | rounds | scanned per guest | boot of all | sweeper CPU |"
echo "|---|---|---|---|---|---|---|---|"
rm -f "$W/steady.txt"
run 1
run "$K"
one=$(cat "$W/run-1/scanned")
many=$(cat "$W/run-$K/scanned")
awk -v o="$one" -v m="$many" -v k="$K" 'BEGIN {
  printf "\n%d guests: %d pages scanned against %d x one guest = %d: %.1f%% of it (%.2fx fewer)\n",
    k, m, k, k * o, 100 * m / (k * o), (k * o) / m }'
echo
cat "$W/steady.txt"
