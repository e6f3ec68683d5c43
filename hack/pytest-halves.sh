#!/usr/bin/env bash
# `make pytest`: the suite as two pytest runs at once, the worker library's half
# (tests/worker) and the cluster's (everything else). The halves share no fixture, broker,
# port or process, and each spends most of its time waiting on real processes, so on two
# cores both together take about as long as the longer one alone. Each half's output goes to
# its own log, printed whole as that half ends; the exit status is nonzero if either failed.
# Arguments go to both runs (`bash hack/pytest-halves.sh --durations=30`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
logs=$(mktemp -d -t circuitgate-pytest-XXXXXX)

# The node's images first, alone: built cold (minutes of buildah), they would take the cores
# from the worker half's timed waits. A failure here shows again, with its reason, in the
# node tests, which build them the same way.
"$PY" -m tests.node.release || echo "building the node's images failed; the node tests will say why"

"$PY" -m pytest "$@" tests/worker >"$logs/worker.log" 2>&1 &
worker=$!
"$PY" -m pytest "$@" tests --ignore=tests/worker >"$logs/cluster.log" 2>&1 &
cluster=$!
# A stopped run (CI cancelled, Ctrl-C) stops both halves, which tear their fixtures down.
trap 'kill -TERM "$worker" "$cluster" 2>/dev/null; wait' INT TERM

status=0
running=("$worker" "$cluster")
for _ in 1 2; do
    wait -n -p ended "${running[@]}"
    code=$?
    # The other half is left to wait for: a reaped job cannot be waited for again.
    if [ "$ended" = "$worker" ]; then
        half=worker running=("$cluster")
    else
        half=cluster running=("$worker")
    fi
    echo "===== the $half half (exit $code) ====="
    cat "$logs/$half.log"
    [ "$code" -eq 0 ] || status=1
done
rm -rf "$logs"
exit "$status"
