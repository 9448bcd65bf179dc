#!/usr/bin/env bash
# The long build-side robustness runs, with their figures:
#   cache faults   every cached object deleted, truncated to 0 and to half, one bit flipped,
#                  then `build --offline`: an identical image or an error naming the object
#                  (tests/cache_faults.rs; CI runs a sample)
#   build kills    KILLS builds (default 50) SIGKILLed at random moments: a whole output set or
#                  none, never a .partial left (tests/build_crash.rs; CI runs 8)
# The test output goes to target/faults.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PIIMG_FAULTS=${FAULTS:-all} PIIMG_KILLS=${KILLS:-50} \
  cargo test -q --test cache_faults --test build_crash -- --nocapture >target/faults.log 2>&1 &&
  rc=0 || rc=$?
grep -E '^(FAULTS|KILLS|CONCURRENT|CLUSTER):|test result|panicked' target/faults.log
exit $rc
