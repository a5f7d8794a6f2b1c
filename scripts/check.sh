#!/usr/bin/env bash
# gofmt, go mod tidy, go vet, staticcheck and the OpenAPI lint. Installs the
# pinned linters when missing (staticcheck through the Go module cache,
# Redocly CLI from npm into a cache dir).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

REDOCLY_VERSION=2.77.0

unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed:"; echo "$unformatted"; exit 1
fi
if ! go mod tidy -diff; then
	echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1
fi
go vet ./...
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

need_pkg npm npm
redocly_dir="${ECOWATT_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecowatt}/redocly-cli-$REDOCLY_VERSION"
redocly="$redocly_dir/node_modules/.bin/redocly"
if [ ! -x "$redocly" ]; then
	echo "check.sh: installing @redocly/cli@$REDOCLY_VERSION into $redocly_dir" >&2
	npm install --prefix "$redocly_dir" --no-audit --no-fund --loglevel=error "@redocly/cli@$REDOCLY_VERSION" >&2
fi
# Telemetry off: the linter must not phone home. Its Node.js deprecation
# banner (a box on stderr) is dropped; findings and errors are kept.
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
	"$redocly" lint --config docs/redocly.yaml --format stylish docs/openapi.yaml 2> >(grep -v '[║╔╚]' >&2)
echo "check.sh: clean"
