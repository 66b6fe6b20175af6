#!/usr/bin/env bash
# NATS JetStream as a peer for conduit's benchmarks (docs/benchmarks.md).
#
# Runs a PRIVATE nats-server (its own config, port and JetStream file store in a
# directory you give; no system service is used or touched). `conduit-bench
# nats-ingest` calls `serve` once per run and stops the server with SIGTERM.
#
#   scripts/peers/nats.sh install                  install nats-server (Debian) if missing
#   scripts/peers/nats.sh serve --dir D --port P   write D/nats.conf, run nats-server in the
#                                                  foreground (exec: the pid is the server's)
#   scripts/peers/nats.sh bench [args]             conduit-bench nats-ingest [args]
#
# Durability: JetStream acknowledges a publish once it is written to its file
# store and syncs to disk periodically (NATS docs: every 2 minutes by default).
# `sync_interval: always` (fsync before every ack) exists only from nats-server
# 2.10; `serve --sync always` writes it into the config, which Debian's 2.9
# rejects with 'unknown field "sync_interval"'.
set -euo pipefail

PROG="${0##*/}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

usage() {
  cat <<USAGE
Usage: $PROG install
       $PROG serve --dir DIR --port PORT [--sync default|always]
       $PROG bench [conduit-bench nats-ingest options]   (--help for them)
       $PROG version
USAGE
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

install() {
  if command -v nats-server >/dev/null 2>&1; then return 0; fi
  log "nats-server not found: installing the Debian package nats-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y nats-server >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
  command -v nats-server >/dev/null 2>&1 || die "nats-server still missing after apt-get install"
  # The package may start a system service; it listens on the default port, never
  # on the ports used here, and is left alone.
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  version) install; nats-server --version ;;
  serve)
    DIR=""; PORT=""; SYNC=default
    while [ $# -gt 0 ]; do
      case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --sync) SYNC="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
      esac
    done
    [ -n "$DIR" ] || die "--dir is required"
    [[ "$PORT" =~ ^[1-9][0-9]*$ ]] || die "--port must be a port number"
    case "$SYNC" in default|always) ;; *) die "--sync must be default or always" ;; esac
    install
    mkdir -p "$DIR/js"
    SYNC_LINE=""
    [ "$SYNC" = always ] && SYNC_LINE="  sync_interval: always"
    cat > "$DIR/nats.conf" <<CONF
# Private nats-server for the conduit benchmark: JetStream on a file store.
listen: 127.0.0.1:$PORT
http: 0
# Runs are short; no keep-alive PINGs the benchmark client would have to answer.
ping_interval: "10m"
max_payload: 1MB
jetstream {
  store_dir: "$DIR/js"
  max_file_store: 50GB
  max_memory_store: 256MB
$SYNC_LINE
}
CONF
    exec nats-server -c "$DIR/nats.conf"
    ;;
  bench)
    BIN="$REPO/target/release/conduit-bench"
    for b in "$BIN" "$REPO/target/release/conduit"; do
      [ -x "$b" ] || die "$b not found: cargo build --release -p conduit-cli -p conduit-bench"
    done
    install
    cd "$REPO"
    exec "$BIN" nats-ingest "$@"
    ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
