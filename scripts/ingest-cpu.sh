#!/usr/bin/env bash
# Where the CPU of HDFS ingest goes, per million events (docs/benchmarks.md,
# "What 0.85x of local disk would cost: CPU accounting").
#
# For each pair it runs one `conduit-bench ingest --collector` against a
# collector started by hand on local disk, then one on HDFS, and reads the
# CPU time (user + system, /proc/<pid>/stat) of the collector, the DataNode and
# the NameNode from the moment the first call reaches the collector (after the
# client has generated its events) until the client is done. Every event must
# be acknowledged (no TRY_LATER); `conduit-bench ingest` without `--collector`
# is the run that also reads the records back and counts them.
#
#   scripts/ingest-cpu.sh [--pairs N] [--events N] [--connections N]
#
# Needs a running `scripts/hdfs.sh` HDFS (the same CONDUIT_HDFS_STATE and port
# variables as when it was started) and release builds:
#   cargo build --release -p conduit-cli -p conduit-bench
set -euo pipefail

PROG="${0##*/}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

pairs=3 events=4000000 connections=8
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs="$2"; shift 2 ;;
    --events) events="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
  esac
done

conduit="$REPO/target/release/conduit"
bench="$REPO/target/release/conduit-bench"
[ -x "$conduit" ] && [ -x "$bench" ] || die "release builds missing: cargo build --release -p conduit-cli -p conduit-bench"
state="${CONDUIT_HDFS_STATE:-}"
[ -n "$state" ] && [ -f "$state/ports.env" ] || die "CONDUIT_HDFS_STATE does not name a running scripts/hdfs.sh state directory"
# shellcheck disable=SC1091
. "$state/ports.env"
dn=$(cat "$state/run/datanode.pid") nn=$(cat "$state/run/namenode.pid")
kill -0 "$dn" 2>/dev/null && kill -0 "$nn" 2>/dev/null || die "HDFS is not running (scripts/hdfs.sh start)"

work=$(mktemp -d /tmp/ingest-cpu.XXXXXX)
trap 'rm -rf "$work"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
port=19463 http=19464

run() { # backend root
  "$conduit" --log-level warn collector --root "$2" --listen 127.0.0.1:$port --http 127.0.0.1:$http >"$work/collector.log" 2>&1 &
  local pid=$! t
  for t in $(seq 200); do curl -sf "127.0.0.1:$http/metrics" >/dev/null && break; sleep 0.05; done
  "$bench" ingest --collector 127.0.0.1:$port --connections "$connections" --events "$events" --runs 1 >"$work/bench.out" 2>&1 &
  local client=$!
  until curl -s "127.0.0.1:$http/metrics" | grep -qE '^conduit_collector_calls_total\{.*\} [1-9]'; do
    kill -0 "$client" 2>/dev/null || { cat "$work/bench.out" >&2; die "the client ended before its first call"; }
    sleep 0.02
  done
  local c0 d0 n0 c1 d1 n1 du0 ds0 du1 ds1
  c0=$(ticks "$pid") n0=$(ticks "$nn"); read -r du0 ds0 < <(awk '{print $14, $15}' "/proc/$dn/stat")
  wait "$client" || { cat "$work/bench.out" >&2; die "conduit-bench failed"; }
  c1=$(ticks "$pid") n1=$(ticks "$nn"); read -r du1 ds1 < <(awk '{print $14, $15}' "/proc/$dn/stat")
  kill -INT "$pid"; wait "$pid" || true
  # An external collector's records are not read back by the client; every
  # event acknowledged (no TRY_LATER) is what this accounting needs.
  grep -qE '^TRY_LATER +0 ' "$work/bench.out" || { cat "$work/bench.out" >&2; die "some calls were answered TRY_LATER"; }
  local rate client_cpu
  rate=$(awk '/^events\/s/ {print $2}' "$work/bench.out")
  client_cpu=$(awk '/^bench client CPU/ {print $6}' "$work/bench.out")
  awk -v be="$1" -v r="$rate" -v c=$((c1 - c0)) -v du=$((du1 - du0)) -v ds=$((ds1 - ds0)) \
      -v n=$((n1 - n0)) -v cl="$client_cpu" -v m="$events" 'BEGIN {
    k = 100 * m / 1e6
    printf "%-6s %10s %9.2f %8.3f %8.3f %8.3f %7s %9.2f\n", be, r, c / k, du / k, ds / k, n / k, cl, c / k + du / k + ds / k + n / k + cl }'
}

printf '%-6s %10s %9s %8s %8s %8s %7s %9s\n' backend events/s collector dn_user dn_sys namenode client total
echo "(CPU-seconds per million events; $connections connections, $events events per run)"
for i in $(seq "$pairs"); do
  rm -rf "$work/root"; mkdir -p "$work/root"
  run local "$work/root"
  run hdfs "hdfs://$HOST:$NN_PORT/ingest-cpu/$$-$i"
done
