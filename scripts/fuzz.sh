#!/usr/bin/env bash
# Runs every fuzz target in the tree for FUZZTIME each (default 10s).
# Usage: scripts/fuzz.sh [PKG...]   e.g. FUZZTIME=1m scripts/fuzz.sh ./topics/...
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
pkgs=("$@")
[ ${#pkgs[@]} -eq 0 ] && pkgs=(./...)
total=0
for pkg in $(go list "${pkgs[@]}"); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		total=$((total + 1))
		echo "fuzz: $pkg $target ($fuzztime)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
	done
done
echo "fuzz: $total targets ran for $fuzztime each"
