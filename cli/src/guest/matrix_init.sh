set -o pipefail
# A result port whose driver was just loaded appears asynchronously.
i=0; while [ ! -e @PORT@ ] && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done
[ -e @PORT@ ] || echo "cowgup: no @PORT@ (the result port): its driver is neither built in nor loadable"
stty -F @PORT@ raw -echo
/bin/cowgup run --format json --output /tmp/result.json --events @PORT@ @ARGS@ 2>&1 | cat
rc=$?
echo "@EXIT@ rc=$rc"
{ cat /tmp/topology.txt; echo "@RESULT@ rc=$rc release=$(uname -r)"; sed 's/^ *//' /tmp/result.json | tr -d '\n'; echo; echo "@RESULT_END@"; } > @PORT@
sync; reboot -f
