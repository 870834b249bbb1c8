#!/bin/sh
# kselftest TAP (cowgup run --format tap) or KTAP on stdin -> one
# `lava-test-case NAME --result pass|fail|skip` per result line.
# XFAIL (a known kernel failure, expected) is a pass; XPASS and error are fails.
# Names: the TAP number and the description with every character outside
# [A-Za-z0-9_.-] turned into '_', at most 100 characters (LAVA's limit).
# LAVA_TEST_CASE overrides the command (tests use echo).
ltc=${LAVA_TEST_CASE:-lava-test-case}
awk '
/^(not )?ok [0-9]+/ {
    ok = ($1 == "ok"); rest = $0
    sub(/^(not )?ok [0-9]+ ?/, "", rest)
    n = ($1 == "ok") ? $2 : $3
    directive = ""; desc = rest
    if (match(rest, /^# [A-Za-z]+ ?/)) {            # kselftest: ok N # SKIP desc
        directive = toupper(substr(rest, 3, RLENGTH - 3)); sub(/ $/, "", directive)
        desc = substr(rest, RLENGTH + 1)
    } else if (match(rest, / # [A-Za-z]+( |$)/)) {   # KTAP: ok N desc # SKIP reason
        directive = substr(rest, RSTART + 3); sub(/ .*/, "", directive); directive = toupper(directive)
        desc = substr(rest, 1, RSTART - 1)
    }
    if (directive == "SKIP") result = "skip"
    else if (directive == "XFAIL") result = "pass"
    else if (directive == "XPASS" || directive == "ERROR" || directive == "TIMEOUT") result = "fail"
    else result = ok ? "pass" : "fail"
    name = n "_" desc
    gsub(/[^A-Za-z0-9_.-]/, "_", name)
    gsub(/__+/, "_", name); sub(/_$/, "", name)
    print substr(name, 1, 100) "\t" result
}' | while IFS="$(printf '\t')" read -r name result; do
    $ltc "$name" --result "$result"
done
