#!/usr/bin/env bash
# Per-device memory of `ecowatt serve` (issue 14): N idle devices (birth,
# telemetry every 15 s) on a throwaway redis-server, through the suite's
# fleet part; while they are online, a heap profile, a goroutine profile
# and the Go memstats of the server are saved to OUT (default
# /tmp/ecowatt-mem). Then, in the same run, N idle connections to
# Mosquitto (password file + ACL file, the same devices) give its RSS per
# connection (ecowatt-bench idle).
#
#   bash scripts/bench-mem.sh [DEVICES] [OUT] [extra ecowatt serve flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export PATH="$PATH:/usr/sbin:/sbin"
need_pkg redis-server redis-server
need_pkg mosquitto mosquitto
need_pkg mosquitto_passwd mosquitto
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
devices=${1:-3000}
out=${2:-/tmp/ecowatt-mem}
shift 2 || true
rm -rf "$out"; mkdir -p "$out"
WORK=$(mktemp -d -t ecowatt-mem.XXXXXX)
STATE=$(mktemp -d -p /dev/shm ecowatt-mem-state.XXXXXX 2>/dev/null || mktemp -d)
SERVE_PID= MOSQ_PID=
cleanup() {
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	[ -n "$MOSQ_PID" ] && kill "$MOSQ_PID" 2>/dev/null && wait "$MOSQ_PID" 2>/dev/null
	stop_redis
	rm -rf "$WORK" "$STATE"
}
trap cleanup EXIT INT TERM
go build -o "$WORK/ecowatt-bench" ./cmd/ecowatt-bench
go build -o "$WORK/ecowatt" ./cmd/ecowatt
start_redis
trap cleanup EXIT INT TERM
redis_url="redis://127.0.0.1:$REDIS_PORT/0"
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
pprof_addr=127.0.0.1:$(free_port)
"$WORK/ecowatt" serve --redis "$redis_url" --mqtt-addr 127.0.0.1:0 --mqtts-addr "" --http-addr 127.0.0.1:0 \
	--data-dir "$WORK/data" --admin-token "$token" --ready-file "$WORK/ready.json" --pprof-addr "$pprof_addr" \
	--log-level warn "$@" 2>"$out/serve.log" >&2 &
SERVE_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
http=$(sed -n 's/.*"http": *"\([^"]*\)".*/\1/p' "$WORK/ready.json")
ECOWATT_ADMIN_TOKEN="$token" timeout 300 "$WORK/ecowatt" device add --server "http://$http" \
	--count "$devices" --prefix fleet --keys-out "$WORK/fleet-keys.json" | tail -n 1
# Snapshot the server ~10 s into the ingest window (the fleet part logs it).
(
	# The fifth progress line of the ingest window, ~25 s into it, near the
	# end sample (the RSS per device takes the larger of online and end).
	# grep -c prints nothing while fleet.log does not exist yet: count 0.
	while n=$(grep -c "ingest window" "$out/fleet.log" 2>/dev/null) || true; [ "${n:-0}" -lt 5 ]; do
		kill -0 "$SERVE_PID" 2>/dev/null || exit 0
		sleep 1
	done
	curl -s "http://$pprof_addr/debug/pprof/heap" >"$out/heap.pprof" || true
	curl -s "http://$pprof_addr/debug/pprof/heap?debug=1" | sed -n '/^# runtime.MemStats/,$p' >"$out/memstats.txt" || true
	curl -s "http://$pprof_addr/debug/pprof/goroutine" >"$out/goroutine.pprof" || true
	curl -s "http://$pprof_addr/debug/pprof/goroutine?debug=1" | head -1 >"$out/goroutines.txt" || true
	grep VmRSS "/proc/$SERVE_PID/status" >>"$out/memstats.txt" || true
	# The soft memory limit in force (--memory-limit auto moves it with the fleet).
	curl -s -H "Authorization: Bearer $token" "http://$http/metrics" | grep -E '^go_gc_gomemlimit_bytes|^ecowatt_broker_clients_connected' >>"$out/memstats.txt" || true
) &
SNAP_PID=$!
"$WORK/ecowatt-bench" suite --only fleet --fleet-devices "$devices" --budget 5m \
	--server-ready "$WORK/ready.json" --server-pid "$SERVE_PID" --server-token "$token" \
	--server-keys "$WORK/fleet-keys.json" --server-redis "$redis_url" --state-dir "$STATE" \
	--out "$out/fleet.json" 2>&1 | tee "$out/fleet.log" | grep -v "online [0-9]*/" || true
kill "$SNAP_PID" 2>/dev/null || true
wait "$SNAP_PID" 2>/dev/null || true
kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
SERVE_PID=

mosq_port=$(free_port)
mkdir "$WORK/mosquitto"
"$WORK/ecowatt-bench" mosquitto-conf --keys "$WORK/fleet-keys.json" --sub-password "$token" \
	--port "$mosq_port" --dir "$WORK/mosquitto"
mosquitto_passwd -U "$WORK/mosquitto/passwd"
mosquitto -c "$WORK/mosquitto/mosquitto.conf" 2>"$out/mosquitto.log" &
MOSQ_PID=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$mosq_port") 2>/dev/null && break; sleep 0.1; done
sleep 1
"$WORK/ecowatt-bench" idle --url "tcp://127.0.0.1:$mosq_port" --creds "$WORK/mosquitto/devices.txt" \
	--pid "$MOSQ_PID" --n "$devices" | tee "$out/mosquitto-idle.txt"
grep "RSS idle" "$out/fleet.log" || true
grep -E "VmRSS|gomemlimit|clients_connected|# (HeapInuse|HeapIdle|HeapReleased|HeapSys|Stack|Sys|NextGC|NumGC)" "$out/memstats.txt" || true
cat "$out/goroutines.txt"
