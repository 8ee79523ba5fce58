#!/usr/bin/env bash
# `make test`: lint and type-check, start the local stack, run the whole suite, and stop
# the stack again if this script started it (a stack left up by `make run` is kept).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export RAY_AUTH_MODE=token
t0=$(date +%s)

echo "== lint: ruff + mypy + import layers"
$BIN/ruff check . && $BIN/ruff format --check . && $BIN/mypy . && $BIN/lint-imports --no-cache || exit 1

was_up=0
$BIN/fraudray stack status >/dev/null 2>&1 && was_up=1
echo "== local stack"
$BIN/fraudray stack up || exit 1
stop_stack() { [ "$was_up" = 1 ] || $BIN/fraudray stack down; }
trap stop_stack EXIT

echo "== pytest"
$BIN/pytest "$@"
rc=$?
echo "== make test wall time: $(( $(date +%s) - t0 )) s"
exit $rc
