#!/usr/bin/env bash
# Long fuzzing runs: each target of tests/fuzz_targets under libFuzzer (cargo-fuzz on the
# machine's nightly toolchain, AddressSanitizer on) for SECS seconds (default 120), seeded with the
# base inputs tests/fuzz.rs builds. Prints executions, crashes and the slowest input per target;
# a crashing input stays in fuzz/artifacts/TARGET/ and the script exits 1. CI runs the same
# targets on stable with proptest (tests/fuzz.rs); PIIMG_FUZZ_INPUT=TARGET:FILE cargo test --test
# fuzz replay -- --nocapture runs one artifact there, without the sanitizer.
#   SECS=600 ./scripts/fuzz.sh            all targets, 10 minutes each
#   TARGETS="deb fat_reader" ./scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-120}
TARGETS=${TARGETS:-"fat_reader partition_table agent_partition_table device_tree config_txt kernel_cmdline bmap node_json deb profile"}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# The seeds: the same base inputs the proptest targets mutate.
rm -rf fuzz/seeds
PIIMG_FUZZ_SEEDS="$PWD/fuzz/seeds" PIIMG_FUZZ_CASES=10 cargo test -q --test fuzz >/dev/null
# The targets build no image, so the init agent is not cross-compiled for them.
export PIIMG_AGENT_BIN=/dev/null
mkdir -p fuzz/artifacts
if ! cargo +nightly fuzz build >fuzz/artifacts/build.log 2>&1; then
  cat fuzz/artifacts/build.log >&2
  exit 1
fi

failed=0
printf '%-22s %12s %10s %8s %s\n' target executions exec/s crashes "slowest input"
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t.log"
  rc=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -report_slow_units=1 >"$log" 2>&1 || rc=$?
  stat() { grep -o "stat::$1: *[0-9]*" "$log" | tail -1 | grep -o '[0-9]*$' || echo "?"; }
  # libFuzzer also keeps inputs slower than 1 s there (slow-unit-*): reported, not failures.
  crashes=$(find "fuzz/artifacts/$t" -type f ! -name 'slow-unit-*' | wc -l)
  slowest=$(stat slowest_unit_time_sec)
  [ "$slowest" = 0 ] && slowest="< 1 s" || slowest="$slowest s"
  printf '%-22s %12s %10s %8s %s\n' "$t" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "$crashes" "$slowest"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "  $t: libFuzzer exit $rc; see $log and fuzz/artifacts/$t/" >&2
  fi
done
exit $failed
