#!/usr/bin/env bash
# Runs the exchange comparison (see main.go) and writes results.md,
# results.jsonl and plot.png: every configuration -repeat 3 times,
# interleaved across the exchanges; medians with min-max; ratios against the
# faster of none-sync / none-async that lost nothing at each N; bursts of
# ceil(-burst-deliveries 400000 / N) messages.
#
#   bash _benchmarks/run.sh                 # neffos from go.mod (v0.0.24) -> results/
#   bash _benchmarks/run.sh next            # neffos v0.0.25 on Go 1.27 (GOTOOLCHAIN=go1.27.3) -> results/neffos-v0.0.25/
#   bash _benchmarks/run.sh both            # one after the other
#   bash _benchmarks/run.sh current -n 300 -exchanges none-sync,none-async,redis   # any flag of the command after the mode
#   bash _benchmarks/run.sh current -storm-only -out results/storm  # the connect storm alone (-storm 6000 -storm-dialers 64 -repeat 3)
#
# "next" works on a temporary copy of go.mod/go.sum and restores them
# afterwards, whatever happens. The command starts its own redis-server and
# nats-server processes on free loopback ports and stops them by PID; it
# never touches brokers on 6379/4222.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
# The connect storm holds both ends of every websocket in one process
# (-storm 6000: about 12,000 descriptors); the command raises its soft limit
# to the hard one itself and says so when that is too low.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mode="${1:-current}"
[[ $# -gt 0 ]] && shift

run_current() {
	go run . "$@"
}

run_next() {
	local saved
	saved="$(mktemp -d "${TMPDIR:-/tmp}/scaleout-bench-gomod.XXXXXX")"
	cp go.mod go.sum "$saved/"
	# shellcheck disable=SC2064
	trap "cp '$saved/go.mod' '$saved/go.sum' . && rm -rf '$saved'" EXIT
	export GOTOOLCHAIN=go1.27.3
	go get github.com/kataras/neffos@v0.0.25
	go mod tidy
	mkdir -p results/neffos-v0.0.25
	go run . -out results/neffos-v0.0.25 "$@"
}

case "$mode" in
current) run_current "$@" ;;
next) run_next "$@" ;;
both)
	run_current "$@"
	run_next "$@"
	;;
*)
	echo "usage: $0 [current|next|both] [flags...]" >&2
	exit 2
	;;
esac
