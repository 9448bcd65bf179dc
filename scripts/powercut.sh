#!/usr/bin/env bash
# The long power-cut matrix: the worker's first boot on a writable card, cut at 36 points (12
# console milestones from stage 1 to log writes after `ready`, each at 0, 150 and 600 ms), then
# booted again and checked (tests/e2e.rs). CI runs 4 of the cuts. JOBS guests at a time
# (default 2: one TCG thread each on a two-core machine); PHASE=growth (or stage 1, containerd,
# image import, kubeadm, log writes) runs that phase's cuts only. The whole console goes to
# target/powercut.log; the figures are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIIMG_POWERCUTS=${PHASE:-all} PIIMG_POWERCUT_JOBS=${JOBS:-2} \
  cargo test -q --test e2e power_cuts -- --nocapture >target/powercut.log 2>&1 && rc=0 || rc=$?
grep -E '^POWERCUT|test result|panicked' target/powercut.log
exit $rc
