#!/usr/bin/env bash
# Runs the test suite with -race against a throwaway redis-server on a free
# loopback port. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_pkg redis-server redis-server
need_pkg mosquitto_sub mosquitto-clients
need_pkg mosquitto mosquitto
need_pkg chromium chromium # dashboard browser tests

start_redis
export ECOWATT_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
echo "test.sh: redis-server on ${ECOWATT_TEST_REDIS_URL} (dir ${REDIS_DIR})"

pkgs=("$@")
[ ${#pkgs[@]} -eq 0 ] && pkgs=(./...)
go test -race -count="${ECOWATT_TEST_COUNT:-1}" -timeout "${ECOWATT_TEST_TIMEOUT:-20m}" "${pkgs[@]}"
