# EcoWatt — fleet backend for solar-inverter gateways.
# `make help` lists the targets.

GO      ?= go
ARGS    ?=
PKGS    ?= ./...

.PHONY: help run demo test test-long check bench bench-full build fuzz screenshots test-scale

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

run: ## start the server (embedded broker, in-process store when no ECOWATT_REDIS)
	$(GO) run ./cmd/ecowatt serve $(ARGS)

demo: ## start the server with 25 simulated devices
	$(GO) run ./cmd/ecowatt serve --demo 25 $(ARGS)

build: ## build the binaries into bin/
	$(GO) build -o bin/ ./cmd/...

test: ## run all tests with -race against a throwaway redis-server
	bash scripts/test.sh $(PKGS)

test-scale: ## scale-out tests: replica mode (3 replicas behind HAProxy), Mosquitto as external broker + 2 replicas, 3-master Redis Cluster, leases
	bash scripts/test-scale.sh

test-long: ## soak: the race suite three times over, then every fuzz target for a minute
	ECOWATT_TEST_COUNT=3 ECOWATT_TEST_TIMEOUT=60m bash scripts/test.sh $(PKGS)
	FUZZTIME=1m bash scripts/fuzz.sh

check: ## gofmt, go mod tidy -diff, go vet, staticcheck, OpenAPI lint (Redocly)
	bash scripts/check.sh

bench: ## benchmarks vs Mosquitto + envelope cost, quick (< 10 min); see docs/BENCHMARKS.md
	bash scripts/bench.sh

bench-full: ## the same at full size (longer)
	ECOWATT_BENCH_FULL=1 bash scripts/bench.sh

fuzz: ## run each fuzz target briefly
	bash scripts/fuzz.sh

screenshots: ## regenerate docs/img/*.png from the dashboard browser test
	bash scripts/screenshots.sh
