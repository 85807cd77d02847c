#!/usr/bin/env bash
# The whole suite: private Redis/etcd for the tests that need them, then pytest -q.
#   scripts/test.sh [pytest args...]     (default: the whole suite under tests/)
# Services reach the tests as FLEET_TEST_REDIS_URL and FLEET_TEST_ETCD_ENDPOINTS:
#   Redis: $REDIS_URL when set (CI), else the server on 127.0.0.1:6379 (started here if none answers);
#   etcd: a private etcd on free ports with a throw-away data dir.
# REDIS_URL, ETCD_ENDPOINTS and DATABASE_URL are passed through untouched (unset: SQLite,
# in-memory channel layer + eager Celery, no etcd), so the app settings under test stay the defaults.
# Everything started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TAG="test-$$"

cleanup() { "$PY" scripts/services.py stop --tag "$TAG" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

want_redis=1; want_etcd=1
if [ -n "${FLEET_TEST_REDIS_URL:-}" ]; then want_redis=0
elif [ -n "${REDIS_URL:-}" ]; then export FLEET_TEST_REDIS_URL="$REDIS_URL"; want_redis=0; fi
[ -n "${FLEET_TEST_ETCD_ENDPOINTS:-}" ] && want_etcd=0

args=(start --tag "$TAG" --free-etcd-port --redis-port 6379 --env-prefix FLEET_TEST_ --format sh)
[ $want_redis = 1 ] || args+=(--no-redis)
[ $want_etcd = 1 ] || args+=(--no-etcd)
if [ $want_redis = 1 ] || [ $want_etcd = 1 ]; then
	exports="$("$PY" scripts/services.py "${args[@]}")"
	eval "$exports"
fi
echo "test: DATABASE_URL=${DATABASE_URL:-<sqlite>} REDIS_URL=${REDIS_URL:-<unset>}" \
	"FLEET_TEST_REDIS_URL=$FLEET_TEST_REDIS_URL FLEET_TEST_ETCD_ENDPOINTS=$FLEET_TEST_ETCD_ENDPOINTS"

[ $# -gt 0 ] || set -- tests
set +e
.venv/bin/pytest -q "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
	echo "test: pytest collected no tests for: $* -- treating that as a failure" >&2
	rc=1
fi
exit $rc
