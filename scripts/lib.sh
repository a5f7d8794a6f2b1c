# Shared helpers for the scripts; source it.

# need_pkg CMD PACKAGE installs PACKAGE with apt-get when CMD is missing.
need_pkg() {
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "scripts: $1 not found; installing Debian package $2" >&2
		if [ -z "${APT_UPDATED:-}" ]; then
			DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
			APT_UPDATED=1
		fi
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
	fi
}

# free_port prints a free TCP port on 127.0.0.1.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

# start_redis starts a throwaway redis-server in a temp dir and stops it (and
# removes the dir) when the script exits, whatever happens.
start_redis() {
	REDIS_DIR=$(mktemp -d -t ecowatt-redis.XXXXXX)
	REDIS_PORT=$(free_port)
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" \
		--save "" --appendonly no --daemonize yes \
		--pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
	trap stop_redis EXIT INT TERM
	for _ in $(seq 1 50); do
		redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "scripts: redis-server did not start; log:" >&2
	cat "$REDIS_DIR/redis.log" >&2
	return 1
}

stop_redis() {
	if [ -n "${REDIS_DIR:-}" ] && [ -f "$REDIS_DIR/redis.pid" ]; then
		local pid
		pid=$(cat "$REDIS_DIR/redis.pid")
		kill "$pid" 2>/dev/null || true
		# Wait for it to exit: it may still write into the dir while it stops,
		# and rm -rf then fails (and, under set -e, fails the whole run).
		for _ in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	if [ -n "${REDIS_DIR:-}" ]; then
		rm -rf "$REDIS_DIR" 2>/dev/null || rm -rf "$REDIS_DIR" || true
	fi
	REDIS_DIR=
}
