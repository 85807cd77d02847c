#!/usr/bin/env bash
# Benchmarks: every bench/*.py not starting with "_" (e.g. bench/fanin.py), in turn.
#   scripts/bench.sh [args passed to each bench script]     e.g. BENCH=fanin scripts/bench.sh --sizes 100,1000
# Redis: $REDIS_URL if set, else 127.0.0.1:6379 (started here when none answers, stopped after).
# name=value results go to stdout and to var/bench/<name>-<UTC time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TAG="bench-$$"
trap '"$PY" scripts/services.py stop --tag "$TAG" >/dev/null 2>&1 || true' EXIT

if [ -z "${REDIS_URL:-}" ]; then
	eval "$("$PY" scripts/services.py start --tag "$TAG" --no-etcd --redis-port 6379 --env-prefix BENCH_ --format sh)"
	export REDIS_URL_FOR_BENCH="$BENCH_REDIS_URL"
else
	REDIS_URL_FOR_BENCH="$REDIS_URL"
fi

shopt -s nullglob
scripts=()
for f in bench/*.py; do
	name=$(basename "$f" .py)
	[[ $name == _* ]] && continue
	[ -n "${BENCH:-}" ] && [[ ",$BENCH," != *",$name,"* ]] && continue
	scripts+=("$f")
done
if [ ${#scripts[@]} -eq 0 ]; then
	echo "bench: no benchmark scripts found under bench/ (BENCH=${BENCH:-all})" >&2
	exit 1
fi
mkdir -p var/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
rc=0
for f in "${scripts[@]}"; do
	name=$(basename "$f" .py)
	out="var/bench/$name-$stamp.txt"
	echo "bench: $f -> $out" >&2
	extra=()
	"$PY" "$f" --help 2>/dev/null | grep -q -- '--redis-url' && extra=(--redis-url "$REDIS_URL_FOR_BENCH")
	if ! "$PY" "$f" "${extra[@]}" "$@" | tee "$out"; then
		echo "bench: $f failed" >&2
		rc=1
	fi
done
exit $rc
