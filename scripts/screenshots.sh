#!/usr/bin/env bash
# Regenerates docs/img/*.png from the dashboard browser test
# (cmd/ecowatt TestDashboard) against a throwaway redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_pkg redis-server redis-server
need_pkg chromium chromium

start_redis
export ECOWATT_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
mkdir -p docs/img
export ECOWATT_SCREENSHOTS="$PWD/docs/img"
log=$(mktemp -t ecowatt-screenshots.XXXXXX)
status=0
go test -count=1 -timeout 10m -run '^TestDashboard$' -v ./cmd/ecowatt/ >"$log" 2>&1 || status=$?
grep -E '^(=== RUN|--- |ok|FAIL|PASS)|browser_test' "$log" || true
if [ "$status" -ne 0 ]; then
	echo "screenshots.sh: the browser test failed; full log in $log" >&2
	exit "$status"
fi
rm -f "$log"
echo "screenshots.sh: wrote $(ls docs/img/*.png | wc -l) PNGs to docs/img"
