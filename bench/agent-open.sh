#!/usr/bin/env bash
# open() latency under on-access scanning, side by side in one run:
#   1. no agent
#   2. svm-agent + svm serve, cold (fresh daemon and agent, first open of each file)
#   3. svm-agent, warm (second pass: the agent's clean cache)
#   4. svm-agent restarted against the same svm serve (the SVM's caches warm, the agent's
#      empty: what another guest opening the same files sees)
#   5. clamonacc + clamd (Debian's ClamAV, OnAccessPrevention), cold (fresh clamd)
#   6. clamonacc + clamd, warm (second pass: clamd's clean cache)
# on N small files (1-16 KiB, distinct deterministic content) in a dedicated tmpfs, with the
# same signature set loaded by svm serve (-d) and clamd (DatabaseDirectory). Per-open latency
# is measured by a compiled probe (tests/src/bin/openlat.rs: File::open timed with Instant).
# Then the time to start a program that opens and reads START_FILES files (hyperfine, end to
# end): cold (COLD_SETS never-seen sets, one run each, median) and warm (median of WARM_RUNS).
# Every enforcing setup must deny an EICAR file (open fails with EPERM) before it is timed.
# Needs root (fanotify permission events, mount). Everything is torn down on exit.
# Each open-latency row is repeated REPS times, each time with fresh daemons (so every cold
# pass is cold); the table shows the median over the repetitions and a CPU-noise indicator.
#   bench/agent-open.sh              # N=10000 REPS=5 START_FILES=2000 COLD_SETS=5 WARM_RUNS=10
#   OUT=/var/tmp/agent-open.md bench/agent-open.sh
#   PIN=0 bench/agent-open.sh        # everything (probe, agents, daemons) on CPU 0 only
# PIN exists because on this 2-vCPU VM a wake-up of a thread on the other (idle) vCPU costs
# about 100 us, and an on-access scan is a chain of wake-ups (opener -> agent -> SVM -> agent
# -> opener). Pinned, the same chain runs as context switches on one CPU.
set -euo pipefail
if [ -n "${PIN:-}" ] && [ -z "${AGENT_OPEN_PINNED:-}" ]; then
  export AGENT_OPEN_PINNED=1
  exec taskset -c "$PIN" "$0" "$@"
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
N=${N:-10000}
REPS=${REPS:-5}
START_FILES=${START_FILES:-2000}
COLD_SETS=${COLD_SETS:-5}
WARM_RUNS=${WARM_RUNS:-10}
MNT=${MNT:-/tmp/bench-oa}
METRICS_PORT=${METRICS_PORT:-19417}
OUT=${OUT:-/var/tmp/agent-open.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}

[ "$(id -u)" = 0 ] || { echo "agent-open.sh: run as root (fanotify permission events, mount)" >&2; exit 1; }
need=()
command -v clamd > /dev/null || need+=(clamav-daemon)
command -v clamonacc > /dev/null || need+=(clamav-daemon clamav)
command -v clamdscan > /dev/null || need+=(clamdscan)
command -v hyperfine > /dev/null || need+=(hyperfine)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y "${need[@]}"
fi
id clamav > /dev/null 2>&1 || { echo "agent-open.sh: no clamav user (the clamav packages create it)" >&2; exit 1; }
if mountpoint -q "$MNT"; then
  echo "agent-open.sh: $MNT is already a mount point; unmount it or set MNT" >&2
  exit 1
fi

(cd "$REPO" && cargo build --release --workspace -q)
SVM="$CARGO_TARGET_DIR/release/svm"
AGENT="$CARGO_TARGET_DIR/release/svm-agent"
OPENLAT="$CARGO_TARGET_DIR/release/openlat"
for b in "$SVM" "$AGENT" "$OPENLAT"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done

W=$(mktemp -d /var/tmp/agent-open.XXXX)
chmod 755 "$W"
RES="$W/results.jsonl"
: > "$RES"
CMDS="$W/commands.txt"
: > "$CMDS"
SERVE_PID="" AGENT_PID="" CLAMD_PID="" ONACC_PID="" MOUNTED=""

log() { echo "[$(date +%T)] $*" >&2; }
cmd() { echo "$*" >> "$CMDS"; }

stop() { # stop PID: TERM, then KILL after 10 s
  local p=$1
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2> /dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$p" 2> /dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2> /dev/null || true
  wait "$p" 2> /dev/null || true
}
stop_agent() { stop "$AGENT_PID"; AGENT_PID=""; }
stop_svm() { stop_agent; stop "$SERVE_PID"; SERVE_PID=""; }
stop_clam() { stop "$ONACC_PID"; ONACC_PID=""; stop "$CLAMD_PID"; CLAMD_PID=""; }
cleanup() {
  local rc=$?
  set +e
  stop_agent
  stop_clam
  stop_svm
  if [ -n "$MOUNTED" ]; then umount "$MNT" || umount -l "$MNT"; fi
  rmdir "$MNT" 2> /dev/null
  if [ "$rc" != 0 ] && [ -d "$W" ]; then
    for f in "$W"/*.log "$W"/clamd/*.log; do
      [ -f "$f" ] && { echo "--- $f (tail)" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_log() { # wait_log FILE PATTERN PID WHAT
  for _ in $(seq 600); do
    grep -q "$2" "$1" 2> /dev/null && return 0
    kill -0 "$3" 2> /dev/null || { echo "$4 exited:" >&2; tail -n 20 "$1" >&2; return 1; }
    sleep 0.1
  done
  echo "$4 did not become ready in 60 s" >&2
  return 1
}

# --- files and signatures ------------------------------------------------------------------
mkdir -p "$MNT"
mount -t tmpfs -o size=1g,mode=0755 none "$MNT"
MOUNTED=1
cmd "mount -t tmpfs -o size=1g,mode=0755 none $MNT"
log "generating $N files + $((COLD_SETS + 1)) x $START_FILES files in $MNT and the signature set"
python3 - "$MNT" "$N" "$START_FILES" "$COLD_SETS" "$W/db" << 'PY'
import hashlib, os, random, sys
mnt, n, start_files, cold_sets, db = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
assert hashlib.md5(EICAR).hexdigest() == "44d88612fea8a8f36de82e1278abb02f"

def gen(name, paths):
    rng = random.Random("svm-agent-open-" + name)
    for i, p in enumerate(paths):
        head = b"svm-bench %s %d\n" % (name.encode(), i)  # distinct content in every file
        size = rng.randint(1024, 16384)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(head + rng.randbytes(size - len(head)))

gen("files", [f"{mnt}/files/d{i // 100:03d}/f{i:05d}" for i in range(n)])
for s in range(1, cold_sets + 1):
    gen(f"cold{s}", [f"{mnt}/start/cold{s}/f{i:05d}" for i in range(start_files)])
gen("warm", [f"{mnt}/start/warm/f{i:05d}" for i in range(start_files)])
os.makedirs(f"{mnt}/eicar")
with open(f"{mnt}/eicar/eicar.com", "wb") as f:
    f.write(EICAR)

# The same small set for both: EICAR by MD5 and by body, 1000 random MD5s, 1000 random
# 16-byte body patterns (none occurs in the files above).
os.makedirs(db)
rng = random.Random("svm-agent-open-sigs")
with open(f"{db}/bench.hdb", "w") as f:
    f.write("44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n")
    for i in range(1000):
        f.write("%s:%d:Bench.Hash.%d\n" % (rng.randbytes(16).hex(), rng.randint(1024, 16384), i))
with open(f"{db}/bench.ndb", "w") as f:
    f.write("Eicar-Test-Signature.Body:0:*:%s\n" % EICAR.hex())
    for i in range(1000):
        f.write("Bench.Body.%d:0:*:%s\n" % (i, rng.randbytes(16).hex()))
PY
chmod -R a+rX "$W/db"
SIGINFO=$("$SVM" sigs info -d "$W/db" 2>&1 | python3 -c '
import json, sys
t = sys.stdin.read()
try:
    j = json.loads(t)
    print("bench.hdb + bench.ndb: %d MD5 + %d body signatures (EICAR in both), digest %s" % (j["counts"]["md5"], j["counts"]["body"], j["digest"][:16]))
except Exception:
    print(" ".join(t.split()))
')
log "signature set: $SIGINFO"
NDIRS=$(find "$MNT" -type d | wc -l)

# CPU accounting for the "other CPU" noise indicator: busy jiffies of the whole machine minus
# those of the processes under test (the probe and the daemons of the setup).
HZ=$(getconf CLK_TCK)
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
cpu_steal() { awk '/^cpu / {print $9}' /proc/stat; }
pids_cpu() {
  local s=0 p t
  for p in "$@"; do
    t=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2> /dev/null || true)
    s=$((s + ${t:-0}))
  done
  echo "$s"
}

measure() { # measure LABEL REP: one timed pass over the N files
  local out b0 b1 st0 st1 d0 d1
  cmd "$OPENLAT measure --label '$1' $MNT/files"
  # shellcheck disable=SC2086 # empty PIDs vanish on purpose
  b0=$(cpu_busy) st0=$(cpu_steal) d0=$(pids_cpu $SERVE_PID $AGENT_PID $CLAMD_PID $ONACC_PID)
  out=$("$OPENLAT" measure --label "$1" "$MNT/files")
  # shellcheck disable=SC2086
  b1=$(cpu_busy) st1=$(cpu_steal) d1=$(pids_cpu $SERVE_PID $AGENT_PID $CLAMD_PID $ONACC_PID)
  out=$(python3 -c '
import json, sys
j = json.loads(sys.argv[1])
b0, b1, st0, st1, d0, d1, hz, rep = map(int, sys.argv[2:])
j["rep"] = rep
j["other_cpu_s"] = max(0, (b1 - b0) - (d1 - d0) - j["self_cpu_ticks"]) / hz
j["steal_s"] = (st1 - st0) / hz
print(json.dumps(j))' "$out" "$b0" "$b1" "$st0" "$st1" "$d0" "$d1" "$HZ" "$2")
  echo "$out" >> "$RES"
  log "$1 (rep $2): $(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("open p50 %.1f us, p99 %.1f us, mean %.1f us; %d files, %.2f s; other CPU %.2f s, steal %.2f s" % (j["open_p50_us"], j["open_p99_us"], j["open_mean_us"], j["files"], j["wall_s"], j["other_cpu_s"], j["steal_s"]))' "$out")"
}

start_bench() { # start_bench KEY: program start, cold sets (one run each) and warm (median)
  local sets
  sets=$(seq -s, -f 'cold%g' 1 "$COLD_SETS")
  cmd "hyperfine -N --runs 1 -L set $sets '$OPENLAT read $MNT/start/{set}'"
  hyperfine -N --style basic --runs 1 -L set "$sets" --export-json "$W/start-$1-cold.json" \
    "$OPENLAT read $MNT/start/{set}" > "$W/hyperfine-$1-cold.log" 2>&1
  cmd "hyperfine -N --warmup 2 --runs $WARM_RUNS '$OPENLAT read $MNT/start/warm'"
  hyperfine -N --style basic --warmup 2 --runs "$WARM_RUNS" --export-json "$W/start-$1-warm.json" \
    "$OPENLAT read $MNT/start/warm" > "$W/hyperfine-$1-warm.log" 2>&1
  log "$1: program start measured"
}

expect_denied() { # expect_denied WHAT: EICAR must be blocked (EPERM), else the setup is not enforcing
  local out
  if out=$("$OPENLAT" denied "$MNT/eicar/eicar.com"); then
    log "$1: sanity: $out"
  else
    echo "$1 does NOT block EICAR ($out): refusing to time a non-enforcing setup" >&2
    return 1
  fi
}

metric_sum() { curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. no agent -----------------------------------------------------------------------------
"$OPENLAT" read "$MNT" > /dev/null # warm the dentry and inode caches for every setup
if "$OPENLAT" denied "$MNT/eicar/eicar.com" > /dev/null; then
  echo "EICAR is denied with no agent running: another on-access scanner is active" >&2
  exit 1
fi
for rep in $(seq "$REPS"); do measure "no agent" "$rep"; done
start_bench none

# --- 2-4. svm-agent + svm serve --------------------------------------------------------------
start_serve() {
  cmd "$SVM serve -d $W/db --listen $W/svm.sock --metrics 127.0.0.1:$METRICS_PORT --audit-log $W/audit.jsonl"
  "$SVM" serve -d "$W/db" --listen "$W/svm.sock" --metrics "127.0.0.1:$METRICS_PORT" \
    --audit-log "$W/audit.jsonl" 2> "$W/serve.log" &
  SERVE_PID=$!
  wait_log "$W/serve.log" "ready:" "$SERVE_PID" "svm serve"
}
AGENT_RUN=0
AGENT_LOG=""
start_agent() {
  AGENT_RUN=$((AGENT_RUN + 1))
  AGENT_LOG="$W/agent$AGENT_RUN.log"
  cmd "$AGENT --socket $W/svm.sock --mount $MNT --open-perm --deadline-ms 2000 --fallback allow"
  "$AGENT" --socket "$W/svm.sock" --mount "$MNT" --open-perm --deadline-ms 2000 --fallback allow \
    2> "$AGENT_LOG" &
  AGENT_PID=$!
  wait_log "$AGENT_LOG" "svm-agent: ready" "$AGENT_PID" "svm-agent"
  grep -Eq 'ready:.*(=|\()connected' "$AGENT_LOG" || { echo "svm-agent did not connect to svm serve" >&2; return 1; }
}
stop_agent_stats() { # stop the agent and keep the counters it prints when it stops
  stop_agent
  grep -h "svm-agent: stopping" "$AGENT_LOG" | sed 's/^svm-agent: stopping: //' >> "$W/agent-stats.txt" || true
}

SVM_SIDE="" SVM_SCANS=""
for rep in $(seq "$REPS"); do
  log "svm (rep $rep): starting a fresh svm serve and svm-agent"
  start_serve
  start_agent
  expect_denied "svm-agent"
  scans0=$(metric_sum svm_scans_total)
  vsum0=$(metric_sum svm_verdict_seconds_sum) vcnt0=$(metric_sum svm_verdict_seconds_count) ssum0=$(metric_sum svm_scan_seconds_sum)
  measure "svm-agent cold" "$rep"
  scans1=$(metric_sum svm_scans_total)
  vsum1=$(metric_sum svm_verdict_seconds_sum) vcnt1=$(metric_sum svm_verdict_seconds_count) ssum1=$(metric_sum svm_scan_seconds_sum)
  side=$(python3 -c 'import sys; v0,v1,c0,c1,s0,s1,n=map(float,sys.argv[1:]); print("%.0f/%.0f" % ((v1-v0)/max(c1-c0,1)*1e6, (s1-s0)/max(n,1)*1e6))' \
    "$vsum0" "$vsum1" "$vcnt0" "$vcnt1" "$ssum0" "$ssum1" "$((scans1 - scans0))")
  SVM_SIDE="$SVM_SIDE $side"
  if [ "$((scans1 - scans0))" -lt "$N" ]; then
    echo "svm serve ran $((scans1 - scans0)) scans on the cold pass, expected >= $N" >&2
    exit 1
  fi
  measure "svm-agent warm (agent cache)" "$rep"
  scans2=$(metric_sum svm_scans_total)
  stop_agent_stats
  start_agent
  expect_denied "svm-agent (restarted)"
  measure "svm-agent restarted (SVM cache warm)" "$rep"
  scans3=$(metric_sum svm_scans_total)
  SVM_SCANS="$SVM_SCANS $((scans1 - scans0))/$((scans2 - scans1))/$((scans3 - scans2))"
  log "svm serve scans (cold/warm/restarted pass): $((scans1 - scans0))/$((scans2 - scans1))/$((scans3 - scans2)); mean verdict/scan us inside svm serve on the cold pass: $side"
  if [ "$rep" = "$REPS" ]; then start_bench svm; fi
  stop_agent_stats
  stop_svm
done
SVM_FALLBACKS=$(cat "$W"/agent*.log | grep -c "no verdict\|fallback policy applied" || true)
if [ "$SVM_FALLBACKS" != 0 ]; then
  echo "svm-agent applied its fallback policy during the run:" >&2
  grep -h "no verdict\|fallback" "$W"/agent*.log >&2
  exit 1
fi

# --- 5-6. clamonacc + clamd ------------------------------------------------------------------
mkdir -p "$W/clamd/tmp"
chown -R clamav: "$W/clamd"
cat > "$W/clamd.conf" << CONF
DatabaseDirectory $W/db
LocalSocket $W/clamd/clamd.sock
LocalSocketMode 666
FixStaleSocket yes
User clamav
Foreground yes
LogFile $W/clamd/clamd.log
TemporaryDirectory $W/clamd/tmp
SelfCheck 0
OnAccessIncludePath $MNT
OnAccessPrevention yes
OnAccessExcludeUname clamav
CONF
start_clam() {
  local i fd marks=0
  cmd "clamd --config-file=$W/clamd.conf   # with this config:"
  sed 's/^/    /' "$W/clamd.conf" >> "$CMDS"
  clamd --config-file="$W/clamd.conf" >> "$W/clamd-stdout.log" 2>&1 &
  CLAMD_PID=$!
  for i in $(seq 600); do
    if [ -S "$W/clamd/clamd.sock" ] && python3 - "$W/clamd/clamd.sock" 2> /dev/null << 'PY'; then break; fi
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"zPING\0"); assert s.recv(16).startswith(b"PONG")
PY
    kill -0 "$CLAMD_PID" 2> /dev/null || { echo "clamd exited" >&2; cat "$W/clamd-stdout.log" >&2; return 1; }
    [ "$i" != 600 ] || { echo "clamd did not answer PING in 60 s" >&2; return 1; }
    sleep 0.1
  done
  cmd "clamonacc --foreground --fdpass --config-file=$W/clamd.conf --log=$W/clamonacc.log"
  clamonacc --foreground --fdpass --config-file="$W/clamd.conf" --log="$W/clamonacc.log" >> "$W/clamonacc-stdout.log" 2>&1 &
  ONACC_PID=$!
  # Ready when its fanotify group holds a mark on every directory of the test tree (its DDD
  # walks the include path and marks directories one by one), and it blocks EICAR.
  for i in $(seq 600); do
    kill -0 "$ONACC_PID" 2> /dev/null || { echo "clamonacc exited" >&2; cat "$W/clamonacc-stdout.log" "$W/clamonacc.log" >&2; return 1; }
    marks=0
    for fd in /proc/"$ONACC_PID"/fd/*; do
      if [ "$(readlink "$fd" 2> /dev/null)" = "anon_inode:[fanotify]" ]; then
        marks=$(grep -c '^fanotify ino:' "/proc/$ONACC_PID/fdinfo/${fd##*/}" || true)
      fi
    done
    [ "$marks" -lt "$NDIRS" ] || break
    [ "$i" != 600 ] || { echo "clamonacc marked $marks of $NDIRS directories in 60 s" >&2; return 1; }
    sleep 0.1
  done
  log "clamonacc: $marks fanotify marks for $NDIRS directories"
  for i in $(seq 50); do
    if "$OPENLAT" denied "$MNT/eicar/eicar.com" > /dev/null; then break; fi
    sleep 0.2
  done
  expect_denied "clamonacc"
}
for rep in $(seq "$REPS"); do
  log "clamonacc (rep $rep): starting a fresh clamd and clamonacc"
  start_clam
  measure "clamonacc cold" "$rep"
  measure "clamonacc warm (clamd cache)" "$rep"
  if [ "$rep" = "$REPS" ]; then start_bench clamonacc; fi
  stop_clam
done
CLAM_FOUND=$(grep -c "FOUND" "$W/clamonacc.log" || true)

for rep in $(seq "$REPS"); do measure "no agent (again, at the end)" "$rep"; done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------
{
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); svm at $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- . 2> /dev/null || echo ' (+ uncommitted changes)')"
  echo "Machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); CPU affinity $([ -n "${PIN:-}" ] && echo "pinned to CPU $PIN" || echo "all CPUs"); load average before $LOAD_BEFORE, after $LOAD_AFTER"
  echo "ClamAV: $(clamd --version 2> /dev/null | head -1); hyperfine $(hyperfine --version | awk '{print $2}')"
  echo "Files: $N files of 1-16 KiB (distinct content) on tmpfs $MNT, 100 per directory; signatures: $SIGINFO"
  echo "Sanity: each enforcing setup denied $MNT/eicar/eicar.com (EPERM) before it was timed (clamonacc FOUND lines: $CLAM_FOUND); svm serve scans per rep (cold/warm/restarted pass):$SVM_SCANS; mean verdict latency/mean scan inside svm serve on the cold pass, µs:$SVM_SIDE; svm-agent fallbacks: $SVM_FALLBACKS; agent counters at stop: $(paste -sd';' "$W/agent-stats.txt" | sed 's/;/; /g')"
  echo
  python3 - "$RES" "$W" "$START_FILES" "$COLD_SETS" "$WARM_RUNS" << 'PY'
import json, statistics, sys
res, w, start_files, cold_sets, warm_runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
order, by = [], {}
for line in open(res):
    r = json.loads(line)
    if r["label"] not in by:
        order.append(r["label"])
        by[r["label"]] = []
    by[r["label"]].append(r)
med = lambda label, k: statistics.median(r[k] for r in by[label])
base99 = med("no agent", "open_p99_us")
c50, c99 = med("clamonacc cold", "open_p50_us"), med("clamonacc cold", "open_p99_us")
reps = len(by["no agent"])
print("### open() latency, %d files, median of %d repetitions (µs)\n" % (by["no agent"][0]["files"], reps))
print("| setup | p50 | p99 | mean | max | p99 per rep | p99 − no agent | open+read mean | clamonacc cold p50 ÷ this p50 | clamonacc cold p99 ÷ this p99 | other CPU s | steal s |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
for label in order:
    p50, p99 = med(label, "open_p50_us"), med(label, "open_p99_us")
    print("| %s | %.1f | %.1f | %.1f | %.0f | %s | %+.1f | %.1f | %.1f× | %.1f× | %.2f | %.2f |" % (
        label, p50, p99, med(label, "open_mean_us"), max(r["open_max_us"] for r in by[label]),
        " ".join("%.0f" % r["open_p99_us"] for r in by[label]), p99 - base99,
        med(label, "open_read_mean_us"), c50 / p50, c99 / p99, med(label, "other_cpu_s"), med(label, "steal_s")))
print()
print("p99 − no agent: the p99 open() latency added by the setup. open+read: File::open + read_to_end; "
      "clamonacc with OnAccessPrevention also marks FAN_ACCESS_PERM, so its read() waits for a second scan request. "
      "other CPU s: CPU time used during the pass by processes other than the probe and the setup's daemons; "
      "steal s: time the hypervisor ran something else while this VM's vCPUs wanted to run (both medians over the repetitions; noise indicators).\n")
print("### Program start: one process opens and reads %s files (hyperfine, end to end, ms)\n" % start_files)
print("cold = %s sets never opened under this daemon, one run each, median; warm = median of %s runs after 2 warm-up runs.\n" % (cold_sets, warm_runs))
print("| setup | cold median | cold runs | warm median | warm mean ± sd | cold − no agent | warm − no agent |")
print("|---|---:|---|---:|---:|---:|---:|")
out = []
for key, name in (("none", "no agent"), ("svm", "svm-agent"), ("clamonacc", "clamonacc + clamd")):
    cold = [t * 1000 for r in json.load(open(f"{w}/start-{key}-cold.json"))["results"] for t in r["times"]]
    warm = json.load(open(f"{w}/start-{key}-warm.json"))["results"][0]
    out.append((name, statistics.median(cold), cold, warm["median"] * 1000, warm["mean"] * 1000, (warm["stddev"] or 0) * 1000))
b = out[0]
for name, cm, cold, wm, wmean, wsd in out:
    print("| %s | %.1f | %s | %.1f | %.1f ± %.1f | %+.1f | %+.1f |" % (
        name, cm, " ".join("%.1f" % c for c in cold), wm, wmean, wsd, cm - b[1], wm - b[3]))
PY
  echo
  echo "### Exact commands"
  echo
  echo '```'
  echo "$REPO/bench/agent-open.sh   # N=$N REPS=$REPS START_FILES=$START_FILES COLD_SETS=$COLD_SETS WARM_RUNS=$WARM_RUNS"
  awk '!seen[$0]++' "$CMDS"
  echo '```'
} > "$OUT"
cat "$OUT"
log "report written to $OUT"
