#!/bin/sh
# Run by scale-out/lava/cowgup.yaml on the board: fetch the static cowgup,
# run the catalogue as kselftest TAP, report each result as a LAVA test case.
# Parameters come from the environment (LAVA exports the definition's params):
# COWGUP_URL, COWGUP_BIN, FILTER, SKIP, DRY_RUN (1: print the commands only).
set -u
here=$(dirname "$0")
bin=${COWGUP_BIN:-./cowgup}
dry=${DRY_RUN:-0}
run() { if [ "$dry" = 1 ]; then echo "+ $*"; else "$@"; fi; }

if [ -n "${COWGUP_URL:-}" ]; then
    run curl -fsSL -o "$bin" "$COWGUP_URL" || run wget -q -O "$bin" "$COWGUP_URL" || exit 1
    run chmod +x "$bin"
fi
set --
[ -n "${SKIP:-}" ] && set -- --skip "$SKIP"
# FILTER is split into words on purpose: each word is one filter.
# shellcheck disable=SC2086
set -- "$@" ${FILTER:-}
if [ "$dry" = 1 ]; then
    echo "+ $bin run --format tap --output cowgup.tap $*"
    "$bin" list "$@" >/dev/null || exit 1
    echo "+ $here/tap-to-lava.sh < cowgup.tap"
    exit 0
fi
"$bin" run --format tap --output cowgup.tap "$@"
rc=$?
"$here/tap-to-lava.sh" < cowgup.tap
echo "cowgup exited $rc"
# The results are the test cases; the run's exit code is one more.
if [ $rc = 0 ]; then r=pass; else r=fail; fi
${LAVA_TEST_CASE:-lava-test-case} cowgup-run --result $r
