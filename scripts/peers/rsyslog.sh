#!/usr/bin/env bash
# rsyslog as a peer for conduit's ingest benchmark (docs/benchmarks.md).
#
# Runs a PRIVATE rsyslogd (its own config, pid file and work directory in a temp
# dir; the system's rsyslog is never touched) that receives raw lines over TCP
# (imtcp on 127.0.0.1) and writes them with omfile into minute directories
# <out>/yyyy/MM/dd/HH/mm/out.log, the shape of conduit's collector output. It is
# fed the same events as `conduit-bench ingest` (written once by
# `conduit-bench gen`), over C TCP connections, and timed from the first byte sent
# until every line is in the output files.
#
# rsyslog gives no acknowledgements: what is measured is "sent and written"
# (with sync=on, written and fsynced by omfile), not "acknowledged as durable".
#
# Usage: scripts/peers/rsyslog.sh bench [options]     (--help for details)
set -euo pipefail

PROG="${0##*/}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

usage() {
  cat <<EOF
Usage: $PROG bench [options]

Benchmark a private rsyslogd (imtcp -> omfile into minute directories) with the
events of 'conduit-bench gen'. Prints one line per run and the median (min-max).

Options:
  --events N         events per run (default 2000000)
  --sync on|off      omfile sync: on = fsync after each batch (default on)
  --connections C    TCP connections the events are split across (default 8)
  --runs R           runs (default 3); the median is reported
  --seed S           event generator seed, as 'conduit-bench ingest --seed' (default 1)
  --events-file F    use F (one event per line) instead of generating the events
  --conduit-bench BIN
                     conduit-bench binary used to generate the events
                     (default: $REPO/target/release/conduit-bench)
  --io-buffer SIZE   omfile ioBufferSize (default 256k)
  --dequeue-batch N  main queue queue.dequeueBatchSize: messages per omfile
                     batch, so per fsync with sync=on (default: rsyslog's own)
  --timeout S        seconds to wait for all lines per run (default 600)
  --json FILE        append one JSON line per run to FILE
  --keep             keep the temp dir (config, output) and print its path
  -h, --help         this help

Installs rsyslog with apt-get if rsyslogd is missing (needs root).
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "${1:-}" in
  bench) shift ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

EVENTS=2000000
SYNC=on
CONNS=8
RUNS=3
SEED=1
EVENTS_FILE=""
CONDUIT_BENCH="$REPO/target/release/conduit-bench"
IOBUF=256k
DEQUEUE_BATCH=""
TIMEOUT=600
JSON=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --sync) SYNC="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --events-file) EVENTS_FILE="$2"; shift 2 ;;
    --conduit-bench) CONDUIT_BENCH="$2"; shift 2 ;;
    --io-buffer) IOBUF="$2"; shift 2 ;;
    --dequeue-batch) DEQUEUE_BATCH="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --json) JSON="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
case "$SYNC" in on|off) ;; *) die "--sync must be on or off" ;; esac
[[ "$EVENTS" =~ ^[1-9][0-9]*$ ]] || die "--events must be a positive integer"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ -z "$DEQUEUE_BATCH" || "$DEQUEUE_BATCH" =~ ^[1-9][0-9]*$ ]] || die "--dequeue-batch must be a positive integer"
MAIN_QUEUE=""
[ -z "$DEQUEUE_BATCH" ] || MAIN_QUEUE="main_queue(queue.dequeueBatchSize=\"$DEQUEUE_BATCH\")"

if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
  log "rsyslogd not found: installing rsyslog with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y rsyslog >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y rsyslog >/dev/null; }
fi
RSYSLOGD="$(command -v rsyslogd || echo /usr/sbin/rsyslogd)"
# Installing the package may start the system daemon; we never use or stop it.

TMP="$(mktemp -d /tmp/conduit-rsyslog.XXXXXX)"
RSYS_PID=""
cleanup() {
  if [ -n "$RSYS_PID" ] && kill -0 "$RSYS_PID" 2>/dev/null; then
    kill -TERM "$RSYS_PID" 2>/dev/null || true
    wait "$RSYS_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

if [ -z "$EVENTS_FILE" ]; then
  [ -x "$CONDUIT_BENCH" ] || die "$CONDUIT_BENCH not found: build it with 'cargo build --release -p conduit-bench' or pass --conduit-bench"
  EVENTS_FILE="$TMP/events.jsonl"
  "$CONDUIT_BENCH" gen --events "$EVENTS" --seed "$SEED" --out "$EVENTS_FILE"
fi
LINES="$(wc -l < "$EVENTS_FILE")"
[ "$LINES" -eq "$EVENTS" ] || log "note: $EVENTS_FILE holds $LINES lines; using all of them"
EVENTS="$LINES"

# The sender and the poller: connects C sockets, sends contiguous slices of the
# file (split at line boundaries) from one thread each, then polls the total size
# of the output files until it equals the input size (rawmsg + "\n" reproduces
# each line exactly). Prints a JSON object with the timings.
cat > "$TMP/feed.py" <<'PY'
import json, os, socket, sys, threading, time
port, path, conns, outdir, timeout = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
data = open(path, "rb").read()
total = len(data)
bounds, start = [], 0
for i in range(1, conns + 1):
    end = total if i == conns else max(start, data.find(b"\n", total * i // conns - 1) + 1)
    if end == 0:
        end = total
    bounds.append((start, end))
    start = end
view = memoryview(data)
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
sent_at = [0.0] * conns
go = threading.Barrier(conns + 1)
def send(i):
    go.wait()
    a, b = bounds[i]
    socks[i].sendall(view[a:b])
    sent_at[i] = time.perf_counter()
threads = [threading.Thread(target=send, args=(i,)) for i in range(conns)]
for t in threads:
    t.start()
go.wait()
t0 = time.perf_counter()
def written():
    n = 0
    for d, _, files in os.walk(outdir):
        for f in files:
            try:
                n += os.stat(os.path.join(d, f)).st_size
            except FileNotFoundError:
                pass
    return n
done = None
while time.perf_counter() - t0 < timeout:
    if written() >= total:
        done = time.perf_counter()
        break
    time.sleep(0.01)
for t in threads:
    t.join()
for s in socks:
    s.close()
print(json.dumps({
    "elapsed_s": (done - t0) if done else None,
    "sent_s": max(sent_at) - t0,
    "input_bytes": total,
    "written_bytes": written(),
}))
PY

# An order-independent digest of the lines of some files (count and sum of CRCs),
# to check that the output holds exactly the input lines.
cat > "$TMP/digest.py" <<'PY'
import sys, zlib
n = s = 0
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for line in f:
            n += 1
            s = (s + zlib.crc32(line)) & 0xFFFFFFFFFFFFFFFF
print(n, s)
PY
INPUT_DIGEST="$(python3 "$TMP/digest.py" "$EVENTS_FILE")"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RESULTS=()
for run in $(seq 1 "$RUNS"); do
  R="$TMP/run$run"
  mkdir -p "$R/work" "$R/out"
  PORT="$(free_port)"
  cat > "$R/rsyslog.conf" <<EOF
# Private rsyslogd for the conduit benchmark: TCP in, raw lines out, minute files.
global(workDirectory="$R/work" maxMessageSize="64k")
$MAIN_QUEUE
module(load="imtcp" maxSessions="10000")
template(name="raw" type="string" string="%rawmsg%\n")
template(name="minutefile" type="string"
         string="$R/out/%\$year%/%\$month%/%\$day%/%\$hour%/%\$minute%/out.log")
ruleset(name="bench") {
  action(type="omfile" dynaFile="minutefile" template="raw" sync="$SYNC"
         ioBufferSize="$IOBUF" dynaFileCacheSize="16" createDirs="on")
}
input(type="imtcp" port="$PORT" address="127.0.0.1" ruleset="bench")
EOF
  "$RSYSLOGD" -n -f "$R/rsyslog.conf" -i "$R/rsyslogd.pid" >"$R/rsyslogd.log" 2>&1 &
  RSYS_PID=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$RSYS_PID" 2>/dev/null || { cat "$R/rsyslogd.log" >&2; die "rsyslogd exited"; }
    sleep 0.05
  done
  # The readiness probe above opened and closed one empty session; harmless.
  LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
  CPU0="$(awk '{print $14+$15}' "/proc/$RSYS_PID/stat")"
  OUT="$(python3 "$TMP/feed.py" "$PORT" "$EVENTS_FILE" "$CONNS" "$R/out" "$TIMEOUT")"
  CPU1="$(awk '{print $14+$15}' "/proc/$RSYS_PID/stat")"
  RSS_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/$RSYS_PID/status")"
  kill -TERM "$RSYS_PID"; wait "$RSYS_PID" 2>/dev/null || true; RSYS_PID=""
  GOT="$(find "$R/out" -name out.log -exec cat {} + | wc -l)"
  DIRS="$(find "$R/out" -name out.log | wc -l)"
  ELAPSED="$(python3 -c 'import json,sys; v=json.loads(sys.argv[1])["elapsed_s"]; print("" if v is None else v)' "$OUT")"
  if [ -z "$ELAPSED" ] || [ "$GOT" -ne "$EVENTS" ]; then
    log "!!!!!!!!!! run $run FAILED: $GOT of $EVENTS lines written (timeout ${TIMEOUT}s); $OUT"
    log "rsyslogd log: $(tail -5 "$R/rsyslogd.log")"
    exit 1
  fi
  if [ "$(find "$R/out" -name out.log -print0 | sort -z | xargs -0 python3 "$TMP/digest.py")" != "$INPUT_DIGEST" ]; then
    log "!!!!!!!!!! run $run FAILED: the output lines differ from the input lines"
    exit 1
  fi
  TICKS="$(getconf CLK_TCK)"
  LINE="$(python3 - "$OUT" "$EVENTS" "$CPU0" "$CPU1" "$TICKS" "$RSS_KB" <<'PY'
import json, sys
o = json.loads(sys.argv[1]); n = int(sys.argv[2])
cpu = (float(sys.argv[4]) - float(sys.argv[3])) / float(sys.argv[5])
# MB/s counts payload bytes (without the newlines), as conduit-bench ingest does.
o.update(events=n, events_per_s=n / o["elapsed_s"], mb_per_s=(o["input_bytes"] - n) / 1e6 / o["elapsed_s"],
         cpu_s_per_m_events=cpu / (n / 1e6), peak_rss_mib=int(sys.argv[6]) / 1024)
print(json.dumps(o))
PY
)"
  RESULTS+=("$LINE")
  log "run $run: $(python3 -c 'import json,sys; o=json.loads(sys.argv[1]); print("%d events in %.2f s = %.0f events/s (all sent after %.2f s); rsyslogd CPU %.2f s/M events, peak RSS %.1f MiB" % (o["events"], o["elapsed_s"], o["events_per_s"], o["sent_s"], o["cpu_s_per_m_events"], o["peak_rss_mib"]))' "$LINE"); $DIRS minute file(s); $GOT lines verified [load $LOAD]"
  if [ -n "$JSON" ]; then
    python3 -c 'import json,sys; o=json.loads(sys.argv[1]); o.update(bench="rsyslog", run=int(sys.argv[2]), sync=sys.argv[3], connections=int(sys.argv[4]), load_avg=sys.argv[5], io_buffer=sys.argv[6], dequeue_batch=sys.argv[7] or "default"); print(json.dumps(o))' \
      "$LINE" "$run" "$SYNC" "$CONNS" "$LOAD" "$IOBUF" "$DEQUEUE_BATCH" >> "$JSON"
  fi
  rm -rf "$R/out"
done

python3 - "$SYNC" "$CONNS" "$EVENTS" "${DEQUEUE_BATCH:-default}" "${RESULTS[@]}" <<'PY'
import json, statistics, sys
sync, conns, n, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = [json.loads(a) for a in sys.argv[5:]]
print(f"\nrsyslog imtcp -> omfile sync={sync}: {n} events, {conns} connections, dequeue batch {batch}, {len(runs)} run(s)")
print(f"{'metric':<28}" + "".join(f"{'run %d' % (i + 1):>12}" for i in range(len(runs))) + f"{'median':>12}{'(min-max)':>26}")
for key, name, d in [("events_per_s", "events/s (sent and written)", 0), ("mb_per_s", "MB/s", 1),
                     ("elapsed_s", "elapsed s", 2), ("sent_s", "all sent after s", 2),
                     ("cpu_s_per_m_events", "rsyslogd CPU s/M events", 2), ("peak_rss_mib", "rsyslogd peak RSS MiB", 1)]:
    v = [r[key] for r in runs]
    print(f"{name:<28}" + "".join(f"{x:>12.{d}f}" for x in v) + f"{statistics.median(v):>12.{d}f}" + f"{'(%.*f-%.*f)' % (d, min(v), d, max(v)):>26}")
PY
