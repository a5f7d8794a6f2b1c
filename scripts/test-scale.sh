#!/usr/bin/env bash
# Scale-out tests (issue 9), all on loopback and bounded in time:
#   - a throwaway standalone redis-server (the replicas' shared state),
#   - a 3-master Redis Cluster (redis-server --cluster-enabled, created with
#     redis-cli --cluster create) for the single-slot tests, and the
#     backend packages' Redis tests run against the cluster,
#   - a Mosquitto broker as the external broker of two backend replicas,
#   - replica mode (issue 15): three replicas, each with its embedded
#     broker, behind HAProxy (TCP, /readyz checks), on the standalone Redis
#     and again on the cluster (sharded pub/sub across masters); the death
#     of a replica process (kill -9, TestReplicaDeath) and key-cache
#     invalidation across replicas (TestReplicaKeyInvalidation),
#   - the dashboard's fleet page over 10,000 devices (chromium).
# Everything started here is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_pkg redis-server redis-server
need_pkg redis-cli redis-tools
need_pkg mosquitto mosquitto
need_pkg mosquitto_sub mosquitto-clients
need_pkg haproxy haproxy
need_pkg chromium chromium # the 10,000-device dashboard test

SCALE_DIR=$(mktemp -d -t ecowatt-scale.XXXXXX)
SCALE_PIDS=()
cleanup() {
	for p in "${SCALE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for f in "$SCALE_DIR"/*/redis.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
	stop_redis
	rm -rf "$SCALE_DIR"
}
trap cleanup EXIT INT TERM

start_redis # standalone, for the replicas (sets the EXIT trap; ours wraps it)
trap cleanup EXIT INT TERM
export ECOWATT_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"

# --- Redis Cluster: 3 masters, no replicas, bus ports chosen explicitly.
nodes=()
for i in 1 2 3; do
	port=$(free_port)
	bus=$(free_port)
	d="$SCALE_DIR/node$i"
	mkdir -p "$d"
	redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --dir "$d" \
		--cluster-enabled yes --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 \
		--save "" --appendonly no --daemonize yes \
		--pidfile "$d/redis.pid" --logfile "$d/redis.log"
	nodes+=("127.0.0.1:$port")
done
for n in "${nodes[@]}"; do
	for _ in $(seq 1 50); do
		redis-cli -h 127.0.0.1 -p "${n##*:}" ping >/dev/null 2>&1 && break
		sleep 0.1
	done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$SCALE_DIR/cluster-create.log" 2>&1 || {
	cat "$SCALE_DIR/cluster-create.log" >&2
	exit 1
}
for n in "${nodes[@]}"; do
	ok=
	for _ in $(seq 1 100); do
		if redis-cli -h 127.0.0.1 -p "${n##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
			ok=1
			break
		fi
		sleep 0.1
	done
	[ -n "$ok" ] || { echo "test-scale: cluster node $n not ok" >&2; exit 1; }
done
CLUSTER_URL="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
export ECOWATT_TEST_REDIS_CLUSTER_URL="$CLUSTER_URL"
echo "test-scale: redis cluster $CLUSTER_URL"

# --- Mosquitto: anonymous access (mosquitto-go-auth, which would call the
# /mqtt/mosquitto/* callbacks, is not packaged in Debian).
MQTT_PORT=$(free_port)
cat >"$SCALE_DIR/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000
log_dest stderr
EOF
mosquitto -c "$SCALE_DIR/mosquitto.conf" 2>"$SCALE_DIR/mosquitto.log" &
SCALE_PIDS+=($!)
for _ in $(seq 1 50); do
	mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t 'probe' -W 1 -C 1 >/dev/null 2>&1 && break
	[ $? -eq 27 ] && break # timed out waiting for a message: the broker is up
	sleep 0.1
done
export ECOWATT_TEST_MOSQUITTO_URL="tcp://127.0.0.1:$MQTT_PORT"
echo "test-scale: mosquitto on $ECOWATT_TEST_MOSQUITTO_URL"

export ECOWATT_TEST_SCALE=1 # the guarded tests must run, not skip, under CI
start=$(date +%s)

# 1. The dedicated scale tests: cluster single-slot checks, external broker
#    with two replicas, leases, a Redis Cluster primary failover under
#    traffic (TestRedisClusterFailover starts a 3+3-node cluster of its own).
go test -race -count=1 -timeout 10m \
	-run 'Cluster|Scale|Lease|Acquire|Contention|Expiry|Hold|TestDo|TestReplica' \
	./backend/store/ ./backend/lease/ ./cmd/ecowatt/

# 2. The backend packages' Redis tests, against the cluster: any multi-key
#    command or script across slots fails there with CROSSSLOT.
ECOWATT_TEST_REDIS_URL="$CLUSTER_URL" go test -race -count=1 -timeout 10m \
	./backend/ ./backend/lease/ ./backend/telemetry/ ./backend/config/ ./backend/commands/ ./backend/fota/ ./backend/route/ \
	./backend/jobs/ ./backend/httpapi/

# 3. Replica mode on the cluster: routing and event fan-out with the
#    sharded channels on different masters, HAProxy in front (step 1 ran
#    the same tests on the standalone Redis).
ECOWATT_TEST_REDIS_URL="$CLUSTER_URL" go test -race -count=1 -timeout 10m -run 'TestReplica' ./cmd/ecowatt/

# 4. The dashboard's fleet page over 10,000 devices: server-side pages,
#    filters and summary bars at the issue-12 size (make test runs 500).
ECOWATT_BROWSER_FLEET=10000 go test -race -count=1 -timeout 5m -run 'TestDashboardFleetPaging' ./cmd/ecowatt/

echo "test-scale: passed in $(($(date +%s) - start)) s"
