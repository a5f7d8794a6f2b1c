#!/usr/bin/env bash
# Benchmarks of issue 8, results in docs/BENCHMARKS.md (make bench; make
# bench-full sets ECOWATT_BENCH_FULL=1 for the full-size scenarios).
#
#   security  go test -bench 'SealOpen|BareHMAC' ./topics/envelope/
#   broker    ecowatt-bench against the embedded EcoWatt broker (its own
#             process, device auth + ACL) and against Mosquitto (a free
#             port, password file + ACL file), same devices, topics,
#             payloads and client counts, in the same run
#   fleet, commands, fota, redis
#             `ecowatt serve` as its own process on a throwaway
#             redis-server, loaded by devicesim devices run inside
#             ecowatt-bench (their flash on tmpfs, so that fsyncs of the
#             simulated devices do not pace the server); its RSS and CPU
#             are read from /proc/PID
#
# ECOWATT_BENCH_MOSQ_QUEUE sets Mosquitto's max_queued_messages (default 0,
# no limit; Debian ships 1000, with which Mosquitto drops under fan-in).
#
# Writes results/bench-<date>.json, docs/bench/latest[-full].json and the
# generated sections of docs/BENCHMARKS.md, then prints the change against
# the previous latest[-full].json (the suite reads it before it writes the
# new one: --compare and --latest name the same file). Every step is bounded
# in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export PATH="$PATH:/usr/sbin:/sbin"

need_pkg mosquitto mosquitto
need_pkg mosquitto_passwd mosquitto
need_pkg redis-server redis-server
need_pkg redis-cli redis-tools

# Each simulated device holds a socket in ecowatt-bench, and the server one
# per device: lift the soft open-files limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -n "${ECOWATT_BENCH_FULL:-}" ]; then
	size=full command="make bench-full (ECOWATT_BENCH_FULL=1 bash scripts/bench.sh)"
	suite_flags=(--full --repeat 5 --budget 40m) bench_flags=(-benchtime 300ms) bench_rounds=20
	latest=docs/bench/latest-full.json devices=10000
else
	size=quick command="make bench (bash scripts/bench.sh)"
	suite_flags=(--repeat 5 --budget 8m) bench_flags=(-benchtime 200ms) bench_rounds=10
	latest=docs/bench/latest.json devices=1000
fi

# ECOWATT_BENCH_ONLY=jobs,fota runs only those parts (ecowatt-bench suite
# --only); such a partial run is written to results/ only, not recorded as
# the latest run nor into docs/BENCHMARKS.md.
record_flags=(--latest "$latest" --md docs/BENCHMARKS.md --compare "$latest")
if [ -n "${ECOWATT_BENCH_ONLY:-}" ]; then
	suite_flags+=(--only "$ECOWATT_BENCH_ONLY")
	record_flags=(--compare "$latest")
	command="ECOWATT_BENCH_ONLY=$ECOWATT_BENCH_ONLY $command"
fi

WORK=$(mktemp -d -t ecowatt-bench.XXXXXX)
# The simulated devices' flash: tmpfs where there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then STATE=$(mktemp -d -p /dev/shm ecowatt-bench-state.XXXXXX); else STATE=$WORK/state; fi
BROKER_PID= MOSQ_PID= SERVE_PID=
cleanup() {
	for log in broker serve; do
		if [ -s "$WORK/$log.log" ]; then
			echo "bench.sh: $log log (last lines):" >&2
			tail -n 20 "$WORK/$log.log" >&2
		fi
	done
	[ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
	[ -n "$MOSQ_PID" ] && kill "$MOSQ_PID" 2>/dev/null && wait "$MOSQ_PID" 2>/dev/null
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	stop_redis
	rm -rf "$WORK" "$STATE"
}
trap cleanup EXIT INT TERM

echo "bench.sh: $size run; building ecowatt-bench and ecowatt"
go build -o "$WORK/ecowatt-bench" ./cmd/ecowatt-bench
go build -o "$WORK/ecowatt" ./cmd/ecowatt

# Rounds, each measuring both sides, so that each ratio compares figures
# taken seconds apart; the suite keeps the median ratio.
echo "bench.sh: security: seal+open vs bare HMAC (go test -bench, $bench_rounds rounds)"
for round in $(seq 1 "$bench_rounds"); do
	echo "bench.sh: security round $round/$bench_rounds"
	go test -run XXX -bench 'SealOpen|BareHMAC' "${bench_flags[@]}" -count 1 ./topics/envelope/ |
		tee -a "$WORK/security.txt" | grep '^Benchmark'
done

sub_password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

echo "bench.sh: starting the embedded EcoWatt broker (device auth + ACL)"
"$WORK/ecowatt-bench" broker --devices 100 --keys-out "$WORK/keys.json" \
	--sub-password "$sub_password" --ready-file "$WORK/ready.json" 2>"$WORK/broker.log" &
BROKER_PID=$!
for _ in $(seq 1 100); do
	[ -s "$WORK/ready.json" ] && break
	kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; exit 1; }
	sleep 0.1
done
ecowatt_addr=$(sed -n 's/.*"mqtt": *"\([^"]*\)".*/\1/p' "$WORK/ready.json")
[ -n "$ecowatt_addr" ] || { echo "bench.sh: the broker did not start" >&2; cat "$WORK/broker.log" >&2; exit 1; }

echo "bench.sh: starting Mosquitto (password file + ACL file)"
mosq_port=$(free_port)
mkdir "$WORK/mosquitto"
"$WORK/ecowatt-bench" mosquitto-conf --keys "$WORK/keys.json" --sub-password "$sub_password" \
	--port "$mosq_port" --dir "$WORK/mosquitto" --max-queued "${ECOWATT_BENCH_MOSQ_QUEUE:-0}"
mosquitto_passwd -U "$WORK/mosquitto/passwd"
mosquitto -c "$WORK/mosquitto/mosquitto.conf" 2>"$WORK/mosquitto.log" &
MOSQ_PID=$!
for _ in $(seq 1 100); do
	(echo >"/dev/tcp/127.0.0.1/$mosq_port") 2>/dev/null && break
	kill -0 "$MOSQ_PID" 2>/dev/null || { cat "$WORK/mosquitto.log" >&2; exit 1; }
	sleep 0.1
done
mosq_version=$(mosquitto -h 2>/dev/null | head -1 || true)

echo "bench.sh: starting redis-server and ecowatt serve (its own process), $devices devices"
start_redis
trap cleanup EXIT INT TERM # start_redis set its own
redis_url="redis://127.0.0.1:$REDIS_PORT/0"
admin_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$WORK/ecowatt" serve --redis "$redis_url" --mqtt-addr 127.0.0.1:0 --mqtts-addr "" --http-addr 127.0.0.1:0 \
	--data-dir "$WORK/data" --admin-token "$admin_token" --ready-file "$WORK/serve-ready.json" \
	--log-level warn 2>"$WORK/serve.log" >&2 &
SERVE_PID=$!
for _ in $(seq 1 100); do
	[ -s "$WORK/serve-ready.json" ] && break
	kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
	sleep 0.1
done
serve_http=$(sed -n 's/.*"http": *"\([^"]*\)".*/\1/p' "$WORK/serve-ready.json")
[ -n "$serve_http" ] || { echo "bench.sh: ecowatt serve did not start" >&2; exit 1; }
ECOWATT_ADMIN_TOKEN="$admin_token" timeout 120 "$WORK/ecowatt" device add --server "http://$serve_http" \
	--count "$devices" --prefix fleet --keys-out "$WORK/fleet-keys.json" | tail -n 1

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain 2>/dev/null | head -1)" ] && commit="$commit + uncommitted changes"

mkdir -p results docs/bench
echo "bench.sh: broker scenarios: ecowatt tcp://$ecowatt_addr vs mosquitto tcp://127.0.0.1:$mosq_port"
"$WORK/ecowatt-bench" suite "${suite_flags[@]}" \
	--ecowatt-url "tcp://$ecowatt_addr" --ecowatt-keys "$WORK/keys.json" --ecowatt-sub-password "$sub_password" \
	--mosquitto-url "tcp://127.0.0.1:$mosq_port" --mosquitto-creds "$WORK/mosquitto/devices.txt" \
	--mosquitto-sub-password "$sub_password" \
	--security "$WORK/security.txt" \
	--server-ready "$WORK/serve-ready.json" --server-pid "$SERVE_PID" --server-token "$admin_token" \
	--server-keys "$WORK/fleet-keys.json" --server-redis "$redis_url" --state-dir "$STATE" \
	--out "results/bench-$(date -u +%Y%m%d-%H%M%S)-$size.json" "${record_flags[@]}" \
	--command "$command" --commit "$commit" --mosquitto-version "$mosq_version"
