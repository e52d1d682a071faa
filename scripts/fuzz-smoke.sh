#!/usr/bin/env bash
# A short fuzz run for CI: build the fuzz targets that do not link yara-x (its ASan build
# takes about 20 minutes; `yara_rules` is covered by tests/tests/fuzz_regressions.rs), then
# for each one replay fuzz/regressions/<target>/ and fuzz for FUZZ_SECONDS from its seeds.
# Exits non-zero if any target crashes, times out or runs out of memory, naming the target
# and the input that did it.
#
#   FUZZ_SECONDS     seconds of fuzzing per target (default 10)
#   CARGO_TARGET_DIR where the fuzz build goes (default /var/tmp/svm-fuzz-target)
#   FUZZ_TARGETS     the targets to run (default: every target but the YARA ones)
#
# The stable toolchain builds the targets with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# nightly-only sanitizer flags). New corpus entries go to a temporary directory, not to git.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-fuzz-target}
export RUSTC_BOOTSTRAP=1
# Targets that need `--features yara`.
YARA_TARGETS=" yara_rules "

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for t in $(cargo fuzz list); do
        case "$YARA_TARGETS" in *" $t "*) continue ;; esac
        targets+=("$t")
    done
fi

# Optimized, with debug assertions and ASan (cargo-fuzz's defaults with -O); without the
# `yara` feature, so the YARA targets are left out of the build.
cargo fuzz build -O
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    out="$work/$t"
    mkdir -p "$out/corpus" "$out/artifacts"
    # -timeout: one input may take this many seconds before it counts as a hang.
    common=(-timeout=25 -rss_limit_mb=2048 -print_final_stats=1
        "-artifact_prefix=$out/artifacts/")
    status=ok
    if [ -d "regressions/$t" ] && ! "$bin_dir/$t" "${common[@]}" -runs=0 "regressions/$t" \
        >"$out/replay.log" 2>&1; then
        status="failed replaying regressions/$t"
    elif ! "$bin_dir/$t" "${common[@]}" -max_total_time="$FUZZ_SECONDS" \
        "$out/corpus" "seeds/$t" >"$out/fuzz.log" 2>&1; then
        status="failed fuzzing"
    fi
    runs=$(grep -ho 'stat::number_of_executed_units: [0-9]*\|^#[0-9]*' "$out/fuzz.log" 2>/dev/null |
        tail -1 | grep -o '[0-9]*$' || true)
    if [ "$status" = ok ]; then
        echo "fuzz-smoke: $t ok (${runs:-0} executions)"
        continue
    fi
    failed+=("$t")
    echo "fuzz-smoke: $t $status" >&2
    for f in "$out"/artifacts/*; do
        [ -e "$f" ] || continue
        # Keep the input where it can be looked at after the run.
        mkdir -p artifacts/"$t"
        cp "$f" artifacts/"$t"/
        echo "fuzz-smoke: $t: input fuzz/artifacts/$t/$(basename "$f")" >&2
    done
    tail -n 40 "$out"/*.log >&2
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets, ${FUZZ_SECONDS}s each, no crash"
