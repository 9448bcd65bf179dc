#!/bin/sh
# The long supervisor and console soak: a service that crashes CRASHES times (default 100,000)
# beside one that floods its output, behind a 115200-baud console. Prints the test's figures.
# CI runs the same test for 5 s (agent/tests/soak.rs).
set -eu
cd "$(dirname "$0")/.."
CRASHES=${CRASHES:-100000}
PIIMG_SOAK_CRASHES=$CRASHES cargo test -q -p piimg-agent --test soak -- --nocapture 2>&1 |
    grep -E '^SOAK:|test result|panicked'
