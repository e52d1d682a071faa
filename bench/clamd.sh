#!/usr/bin/env bash
# The clamd-compatible listener against a real clamd, side by side, on #2's workload (the
# ~490 MB corpus of ../shared/bench and its 20,000 SHA-256 + 5,000 body signatures):
#   1. `clamdscan --multiscan --fdpass` over the corpus: cold (a fresh daemon per repetition)
#      and warm (a second pass on the same daemon); medians of REPS;
#   2. INSTREAM latency, p50 and p99, for 4 KiB and 1 MiB objects (each object unique, so
#      neither daemon answers from a cache).
#   ANCHORS=/var/tmp/bench-work bench/clamd.sh      (bench/run.sh builds the corpus first)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
A=${ANCHORS:-/var/tmp/bench-work}
REPS=${REPS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}
SVM="$CARGO_TARGET_DIR/release/svm"
SIGS="$A/sigs/clamav"
CORPUS="$A/corpus"
[ -x "$SVM" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
[ -d "$CORPUS" ] && [ -d "$SIGS" ] || { echo "no corpus: run bench/run.sh first" >&2; exit 1; }
command -v clamd >/dev/null && command -v clamdscan >/dev/null || { echo "needs clamav-daemon" >&2; exit 1; }
W=$(mktemp -d /var/tmp/bench-clamd.XXXX)
trap 'pkill -f "$W" 2>/dev/null || true; rm -rf "$W"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
wait_sock() { for _ in $(seq 600); do [ -S "$1" ] && python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > "$W/clamd.conf" <<CFG
LocalSocket $W/clamd.sock
DatabaseDirectory $SIGS
LogFile $W/clamd.log
Foreground yes
TemporaryDirectory $W
StreamMaxLength 100M
CFG
cat > "$W/svm.toml" <<CFG
[clamd]
socket = "$W/svm-clamd.sock"
max_stream = "100M"
CFG
printf 'LocalSocket %s\n' "$W/clamd.sock" > "$W/to-clamd.conf"
printf 'LocalSocket %s\n' "$W/svm-clamd.sock" > "$W/to-svm.conf"
start_clamd() { rm -f "$W/clamd.sock"; clamd --config-file="$W/clamd.conf" >/dev/null 2>&1 & pid=$!; wait_sock "$W/clamd.sock"; }
start_svm() { rm -f "$W/svm-clamd.sock" "$W/svm.sock"; "$SVM" serve --config "$W/svm.toml" --listen "$W/svm.sock" --metrics "" -d "$SIGS" 2>"$W/svm.log" & pid=$!; wait_sock "$W/svm-clamd.sock"; }
pass() { local s e; s=$(now); clamdscan --config-file="$1" --multiscan --fdpass --no-summary "$CORPUS" > "$W/out.$2" 2>&1 || true; e=$(now); echo "$e - $s" | bc; }

echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), kernel $(uname -r)"
echo "corpus: $(find "$CORPUS" -type f | wc -l) files, $(du -sm "$CORPUS" | cut -f1) MB; signatures: $SIGS"
bytes=$(du -sb "$CORPUS" | cut -f1)
for who in clamd svm; do
  cold=(); warm=()
  for _ in $(seq "$REPS"); do
    "start_$who"
    cold+=("$(pass "$W/to-$who.conf" "$who")")
    warm+=("$(pass "$W/to-$who.conf" "$who")")
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  c=$(printf '%s\n' "${cold[@]}" | median); w=$(printf '%s\n' "${warm[@]}" | median)
  found=$(grep -c "FOUND$" "$W/out.$who" || true)
  printf '%s: clamdscan --multiscan --fdpass: cold %.2f s (%.0f MB/s), warm %.2f s (%.0f MB/s); %s FOUND (runs cold: %s; warm: %s)\n' \
    "$who" "$c" "$(echo "$bytes / $c / 1000000" | bc -l)" "$w" "$(echo "$bytes / $w / 1000000" | bc -l)" "$found" "${cold[*]}" "${warm[*]}"
  eval "${who}_cold=$c; ${who}_warm=$w"
done
printf 'svm vs clamd: cold %.1fx, warm %.1fx\n' "$(echo "$clamd_cold / $svm_cold" | bc -l)" "$(echo "$clamd_warm / $svm_warm" | bc -l)"

# 2. INSTREAM latency on a fresh daemon of each.
for who in clamd svm; do
  "start_$who"
  sock=$W/clamd.sock; [ "$who" = svm ] && sock=$W/svm-clamd.sock
  python3 - "$sock" "$who" <<'PY'
import os, socket, statistics, struct, sys, time
sock, who = sys.argv[1], sys.argv[2]
def instream(data):
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    t = time.perf_counter()
    s.sendall(b"zINSTREAM\0" + struct.pack(">I", len(data)) + data + b"\0\0\0\0")
    out = b""
    while not out.endswith(b"\0"):
        b = s.recv(4096)
        if not b: break
        out += b
    dt = time.perf_counter() - t
    s.close()
    assert out.endswith(b"OK\0"), out
    return dt * 1000
for size, n in ((4096, 500), (1 << 20, 60)):
    lat = sorted(instream(os.urandom(size)) for _ in range(n))
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"{who}: INSTREAM {size // 1024} KiB x{n}: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
