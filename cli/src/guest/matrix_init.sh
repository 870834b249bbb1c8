set -o pipefail
stty -F @PORT@ raw -echo
/bin/cowgup run --format json --output /tmp/result.json --events @PORT@ @ARGS@ 2>&1 | cat
rc=$?
echo "@EXIT@ rc=$rc"
{ cat /tmp/topology.txt; echo "@RESULT@ rc=$rc release=$(uname -r)"; sed 's/^ *//' /tmp/result.json | tr -d '\n'; echo; echo "@RESULT_END@"; } > @PORT@
sync; reboot -f
