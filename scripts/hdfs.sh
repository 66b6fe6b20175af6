#!/usr/bin/env bash
# Run a REAL Apache HDFS 2.7.3 (one NameNode + one DataNode) on 127.0.0.1 (or
# the address in HDFS_HOST, e.g. inside a network namespace) for
# conduit's integration and fault tests.
#
# No Hadoop server package is available from the usual registries, but the PyPI
# source archive of pyspark 2.4.8 bundles the official hadoop-hdfs-2.7.3 jar
# (NameNode + DataNode) and every jar it needs. This script downloads that
# archive once (~220 MB), extracts 56 jars (~38 MiB) into a cache and runs the
# daemons from them with java (8+; Java 17 tested).
#
# Usage: scripts/hdfs.sh <command>        (scripts/hdfs.sh --help for details)
set -euo pipefail

PROG="${0##*/}"

usage() {
  cat <<EOF
Usage: $PROG <command>

Commands:
  start            format fresh storage, start NameNode + DataNode, wait until
                   the NameNode left safe mode and the DataNode sent its block
                   report (stops a previous instance of this script first)
  stop             stop the DataNode and NameNode started by this script
  status           print whether each daemon runs; exit 0 if both run, else 3
  env              print: export CONDUIT_TEST_HDFS=hdfs://<host>:<NN port>
  fetch            only download/extract the jars into the cache
  classpath        print the Hadoop client classpath (FsShell: java -cp "$(hdfs.sh classpath)" org.apache.hadoop.fs.FsShell -text hdfs://...)
  stop-datanode    stop the DataNode only
  start-datanode   restart the DataNode (same config/storage); waits for a new
                   block report when the NameNode runs
  stop-namenode    stop the NameNode only
  pause-datanode   freeze the DataNode (SIGSTOP): it keeps its sockets but
                   answers nothing, as a DataNode stuck in GC or on a dead disk
  resume-datanode  let a frozen DataNode run again (SIGCONT)
  start-namenode   restart the NameNode without formatting; waits until it left
                   safe mode (and, if the DataNode runs, until it re-reported)

Environment:
  CONDUIT_HDFS_CACHE    jar/sdist cache      (default \$HOME/.cache/conduit/hdfs)
  CONDUIT_HDFS_STATE    conf/logs/data/pids  (default \$HOME/.local/state/conduit/hdfs)
  CONDUIT_PYSPARK_SDIST an already downloaded pyspark-2.4.8.tar.gz to use instead
                        of downloading it
  HDFS_HOST (127.0.0.1) the address both daemons bind to and advertise (the
                        DataNode registers under it), e.g. a veth address
                        inside a network namespace: ip netns exec NS $PROG start
  HDFS_NN_PORT (9000) HDFS_NN_HTTP_PORT (9870)
  HDFS_DN_PORT (9866) HDFS_DN_HTTP_PORT (9864) HDFS_DN_IPC_PORT (9867)
                        ports used by 'start'; later commands reuse the ports
                        recorded by the last 'start'
  HDFS_HEAP             java -Xmx per daemon (default 256m)
  HDFS_START_TIMEOUT    seconds to wait for the daemons to come up (default 90)
  HDFS_STOP_TIMEOUT     seconds between TERM and KILL (default 15)
  JAVA_HOME             java to use (default: java on PATH)
EOF
}

# ---------------------------------------------------------------- settings --
HADOOP_VERSION=2.7.3
PYSPARK_VERSION=2.4.8
SDIST_NAME="pyspark-$PYSPARK_VERSION.tar.gz"
SDIST_SHA256=3a19b71b8dc8dd91ebc943604a05e1ab01bce052456d42937035632d852d78dc

CACHE="${CONDUIT_HDFS_CACHE:-$HOME/.cache/conduit/hdfs}"
STATE="${CONDUIT_HDFS_STATE:-$HOME/.local/state/conduit/hdfs}"
LIB="$CACHE/lib-$HADOOP_VERSION"
CONF="$STATE/conf"
WEB="$STATE/webres"
LOGS="$STATE/logs"
DATA="$STATE/data"
RUN="$STATE/run"
PORTS_FILE="$STATE/ports.env"
NN_LOG="$LOGS/namenode.log"
DN_LOG="$LOGS/datanode.log"

HEAP="${HDFS_HEAP:-256m}"
START_TIMEOUT="${HDFS_START_TIMEOUT:-90}"
STOP_TIMEOUT="${HDFS_STOP_TIMEOUT:-15}"

NN_CLASS=org.apache.hadoop.hdfs.server.namenode.NameNode
DN_CLASS=org.apache.hadoop.hdfs.server.datanode.DataNode

# Jars (pyspark-2.4.8/deps/jars/<name>.jar) needed by NameNode and DataNode.
JARS="hadoop-annotations-2.7.3 hadoop-auth-2.7.3 hadoop-common-2.7.3 hadoop-hdfs-2.7.3
activation-1.1.1 apacheds-i18n-2.0.0-M15 apacheds-kerberos-codec-2.0.0-M15
api-asn1-api-1.0.0-M20 api-util-1.0.0-M20 avro-1.8.2 commons-beanutils-1.9.4
commons-cli-1.2 commons-codec-1.10 commons-collections-3.2.2 commons-compress-1.20
commons-configuration-1.6 commons-digester-1.8 commons-httpclient-3.1 commons-io-2.4
commons-lang-2.6 commons-logging-1.1.3 commons-math3-3.4.1 commons-net-3.1
curator-client-2.7.1 curator-framework-2.7.1 curator-recipes-2.7.1 gson-2.2.4
guava-14.0.1 htrace-core-3.1.0-incubating httpclient-4.5.6 httpcore-4.4.10
jackson-core-asl-1.9.13 jackson-jaxrs-1.9.13 jackson-mapper-asl-1.9.13 jackson-xc-1.9.13
jaxb-api-2.2.2 jetty-6.1.26 jetty-util-6.1.26 jsp-api-2.1 jsr305-1.3.9 log4j-1.2.17
netty-3.9.9.Final netty-all-4.1.47.Final paranamer-2.8 protobuf-java-2.5.0
javax.servlet-api-3.1.0 javax.ws.rs-api-2.0.1 slf4j-api-1.7.16 slf4j-log4j12-1.7.16
snappy-java-1.1.8.2 xmlenc-0.52 xz-1.5 zookeeper-3.4.6 leveldbjni-all-1.8
xercesImpl-2.9.1 stax-api-1.0-2"

# ----------------------------------------------------------------- helpers --
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s; }

# Ports: 'start' takes them from the environment (or defaults) and records them;
# every other command reuses what the last 'start' recorded.
load_ports() {
  HOST="${HDFS_HOST:-127.0.0.1}"
  NN_PORT="${HDFS_NN_PORT:-9000}"
  NN_HTTP_PORT="${HDFS_NN_HTTP_PORT:-9870}"
  DN_PORT="${HDFS_DN_PORT:-9866}"
  DN_HTTP_PORT="${HDFS_DN_HTTP_PORT:-9864}"
  DN_IPC_PORT="${HDFS_DN_IPC_PORT:-9867}"
  if [ "${1:-}" = recorded ] && [ -f "$PORTS_FILE" ]; then
    # shellcheck disable=SC1090
    . "$PORTS_FILE"
  fi
}

save_ports() {
  mkdir -p "$STATE"
  cat > "$PORTS_FILE" <<EOF
HOST=$HOST
NN_PORT=$NN_PORT
NN_HTTP_PORT=$NN_HTTP_PORT
DN_PORT=$DN_PORT
DN_HTTP_PORT=$DN_HTTP_PORT
DN_IPC_PORT=$DN_IPC_PORT
EOF
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

find_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "java not found (install a JDK/JRE 8+, e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME)"
  fi
  local v major
  v="$("$JAVA" -version 2>&1 | awk -F'"' '/version "/ && !v { v = $2 } END { print v }')"
  [ -n "$v" ] || die "cannot run '$JAVA -version'"
  case "$v" in
    1.*) major="$(echo "$v" | cut -d. -f2)" ;;
    *) major="${v%%[.+-]*}" ;;
  esac
  JOPTS=(-Xmx"$HEAP" -Djava.net.preferIPv4Stack=true -Dconduit.hdfs.state="$STATE")
  if [ "$major" -ge 9 ] 2>/dev/null; then
    # Hadoop 2.7 reflects into java.base; Java 9+ (17 in particular) needs these.
    JOPTS+=(--add-opens java.base/java.lang=ALL-UNNAMED
      --add-opens java.base/java.nio=ALL-UNNAMED
      --add-opens java.base/sun.nio.ch=ALL-UNNAMED
      --add-exports java.base/sun.nio.ch=ALL-UNNAMED
      --add-opens java.base/java.util=ALL-UNNAMED
      --add-opens java.base/java.lang.reflect=ALL-UNNAMED
      --add-opens java.base/java.io=ALL-UNNAMED
      --add-opens java.base/java.net=ALL-UNNAMED)
  fi
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else echo unknown; fi
}

# Put a verified $CACHE/$SDIST_NAME in place (link/copy or pip download).
ensure_sdist() {
  local sdist="$CACHE/$SDIST_NAME"
  [ -f "$sdist" ] && return 0
  mkdir -p "$CACHE"
  local tmp="$CACHE/.sdist.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  if [ -n "${CONDUIT_PYSPARK_SDIST:-}" ] && [ -f "$CONDUIT_PYSPARK_SDIST" ]; then
    log "using $CONDUIT_PYSPARK_SDIST"
    ln "$CONDUIT_PYSPARK_SDIST" "$tmp/$SDIST_NAME" 2>/dev/null \
      || cp "$CONDUIT_PYSPARK_SDIST" "$tmp/$SDIST_NAME"
  else
    [ -n "${CONDUIT_PYSPARK_SDIST:-}" ] && log "CONDUIT_PYSPARK_SDIST=$CONDUIT_PYSPARK_SDIST does not exist; downloading"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to download pyspark==$PYSPARK_VERSION from PyPI"
    log "downloading pyspark==$PYSPARK_VERSION sdist (~220 MB, once) into $CACHE"
    # The sdist's setup.py needs 'wheel' and must not see pypandoc>=1.8, hence a
    # throwaway venv and --no-build-isolation.
    python3 -m venv "$tmp/venv" || { rm -rf "$tmp"; die "python3 -m venv failed (Debian: apt-get install python3-venv)"; }
    "$tmp/venv/bin/pip" install -q wheel setuptools \
      || { rm -rf "$tmp"; die "pip install wheel setuptools failed"; }
    "$tmp/venv/bin/pip" download -q --no-deps --no-build-isolation -d "$tmp" "pyspark==$PYSPARK_VERSION" \
      || { rm -rf "$tmp"; die "pip download pyspark==$PYSPARK_VERSION failed"; }
    [ -f "$tmp/$SDIST_NAME" ] || { rm -rf "$tmp"; die "pip download did not produce $SDIST_NAME"; }
  fi
  local sum
  sum="$(sha256_of "$tmp/$SDIST_NAME")"
  if [ "$sum" = unknown ]; then
    log "warning: no sha256sum/shasum; not verifying $SDIST_NAME"
  elif [ "$sum" != "$SDIST_SHA256" ]; then
    rm -rf "$tmp"
    die "$SDIST_NAME has sha256 $sum, expected $SDIST_SHA256"
  fi
  mv -f "$tmp/$SDIST_NAME" "$sdist"
  rm -rf "$tmp"
}

# Extract the jars into $LIB (atomically; marker file = complete).
ensure_jars() {
  [ -f "$LIB/.complete" ] && return 0
  ensure_sdist
  local tmp="$CACHE/.lib.tmp.$$" members=() j
  rm -rf "$tmp"; mkdir -p "$tmp"
  for j in $JARS; do members+=("pyspark-$PYSPARK_VERSION/deps/jars/$j.jar"); done
  log "extracting ${#members[@]} Hadoop $HADOOP_VERSION jars into $LIB"
  if ! tar -xzf "$CACHE/$SDIST_NAME" -C "$tmp" --strip-components=3 "${members[@]}"; then
    rm -rf "$tmp"
    die "extracting jars from $CACHE/$SDIST_NAME failed (delete it to re-download)"
  fi
  for j in $JARS; do
    [ -s "$tmp/$j.jar" ] || { rm -rf "$tmp"; die "jar $j.jar missing from $SDIST_NAME"; }
  done
  touch "$tmp/.complete"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
}

classpath() {
  local cp="$CONF:$WEB" j
  for j in $JARS; do cp="$cp:$LIB/$j.jar"; done
  printf '%s' "$cp"
}

# pid_of ROLE: print the pid if ROLE (namenode|datanode) is running as started
# by this script, else fail.
pid_of() {
  local role="$1" class pid
  [ "$role" = namenode ] && class="$NN_CLASS" || class="$DN_CLASS"
  [ -f "$RUN/$role.pid" ] || return 1
  pid="$(cat "$RUN/$role.pid" 2>/dev/null || true)"
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  [ -r "/proc/$pid/cmdline" ] || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" || return 1
  # must be an HDFS daemon of the right kind, started for this state dir
  case "$cmdline" in
    *"-Dconduit.hdfs.state=$STATE "*"$class"*) ;;
    *) return 1 ;;
  esac
  echo "$pid"
}

# alive PID: the process exists and is not a zombie (zombies have no cmdline).
alive() {
  local c
  c="$(tr -d '\0' 2>/dev/null < "/proc/$1/cmdline")" && [ -n "$c" ]
}

stop_role() {
  local role="$1" pid end
  if ! pid="$(pid_of "$role")"; then
    rm -f "$RUN/$role.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  end=$(( $(now) + STOP_TIMEOUT ))
  while alive "$pid" && [ "$(now)" -lt "$end" ]; do sleep 0.2; done
  if alive "$pid"; then
    log "$role ($pid) still running ${STOP_TIMEOUT}s after TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    end=$(( $(now) + 10 ))
    while alive "$pid" && [ "$(now)" -lt "$end" ]; do sleep 0.1; done
    alive "$pid" && die "$role ($pid) survived KILL"
  fi
  rm -f "$RUN/$role.pid"
  echo "stopped $role ($pid)"
}

# Daemons a failing start-type command must stop again (see the EXIT trap).
CLEANUP_ROLES=()
on_exit() {
  local rc=$? role
  if [ "$rc" -ne 0 ] && [ "${#CLEANUP_ROLES[@]}" -gt 0 ]; then
    for role in "${CLEANUP_ROLES[@]}"; do stop_role "$role" >&2 || true; done
  fi
  return "$rc"
}
trap on_exit EXIT

# launch ROLE CLASS LOGFILE: start a daemon detached (own session, stdin from
# /dev/null, appending to LOGFILE); the pid file is written by the process
# itself right before it execs java, so it is java's pid.
launch() {
  local role="$1" class="$2" logfile="$3" pidfile="$RUN/$1.pid" _
  local cp; cp="$(classpath)"
  mkdir -p "$RUN" "$LOGS"
  rm -f "$pidfile"
  local launcher=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)
  # shellcheck disable=SC2016  # $$, $0 and $@ belong to the inner bash
  "${launcher[@]}" bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" \
    "$JAVA" "${JOPTS[@]}" -Dproc_"$role" -cp "$cp" "$class" \
    >> "$logfile" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
  [ -s "$pidfile" ] || fail_with_log "$logfile" "$role did not start"
}

fail_with_log() {  # fail_with_log LOGFILE MESSAGE
  log "error: $2"
  if [ -f "$1" ]; then
    log "---- last 40 lines of $1 ----"
    tail -n 40 "$1" >&2
    log "---- end of $1 ----"
  fi
  exit 1
}

log_size() { if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }

# log_has FILE OFFSET PATTERN: PATTERN occurs in FILE after byte OFFSET.
# (no grep -q: with pipefail, tail's SIGPIPE after an early match reads as failure)
log_has() { [ -f "$1" ] && tail -c +"$(( $2 + 1 ))" "$1" | grep -F -- "$3" >/dev/null; }

# wait_until DEADLINE ROLE LOGFILE DESC CMD...: poll CMD; fail (with the log's
# tail) on deadline or if ROLE's process died.
wait_until() {
  local deadline="$1" role="$2" logfile="$3" desc="$4"; shift 4
  until "$@"; do
    pid_of "$role" >/dev/null || fail_with_log "$logfile" "$role exited while waiting for $desc"
    [ "$(now)" -lt "$deadline" ] || fail_with_log "$logfile" "timed out after ${START_TIMEOUT}s waiting for $desc"
    sleep 0.2
  done
}

check_ports_free() {
  local p busy=()
  for p in "$@"; do port_open "$p" && busy+=("$p"); done
  [ "${#busy[@]}" -eq 0 ] || die "port(s) ${busy[*]} on $HOST already in use (set HDFS_HOST, HDFS_NN_PORT, HDFS_NN_HTTP_PORT, HDFS_DN_PORT, HDFS_DN_HTTP_PORT, HDFS_DN_IPC_PORT)"
}

write_config() {
  mkdir -p "$CONF"
  # HttpServer2 needs webapps/<name> on the classpath; the jars lack them.
  local d
  for d in hdfs datanode secondary journal static; do
    mkdir -p "$WEB/webapps/$d"
    echo "<html><body>$d</body></html>" > "$WEB/webapps/$d/index.html"
  done

  cat > "$CONF/core-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://$HOST:$NN_PORT</value></property>
  <property><name>hadoop.tmp.dir</name><value>$DATA/tmp</value></property>
  <property><name>hadoop.security.authentication</name><value>simple</value></property>
  <property><name>fs.trash.interval</name><value>0</value></property>
</configuration>
EOF

  cat > "$CONF/hdfs-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>dfs.replication</name><value>1</value></property>
  <!-- Every file being written reserves a whole block of the DataNode's free
       space until it is completed; with 128 MB blocks, the files a writer gives
       up while a DataNode is stopped or frozen (heartbeats, probes, abandoned
       data files) soon reserve more than a test machine's disk has free, and the
       NameNode refuses every new block for ten minutes. -->
  <property><name>dfs.blocksize</name><value>8388608</value></property>
  <property><name>dfs.permissions.enabled</name><value>false</value></property>
  <property><name>dfs.namenode.acls.enabled</name><value>true</value></property>
  <property><name>dfs.namenode.name.dir</name><value>file://$DATA/name</value></property>
  <property><name>dfs.datanode.data.dir</name><value>file://$DATA/data</value></property>
  <property><name>dfs.namenode.rpc-address</name><value>$HOST:$NN_PORT</value></property>
  <property><name>dfs.namenode.rpc-bind-host</name><value>$HOST</value></property>
  <property><name>dfs.namenode.servicerpc-bind-host</name><value>$HOST</value></property>
  <property><name>dfs.namenode.http-address</name><value>$HOST:$NN_HTTP_PORT</value></property>
  <property><name>dfs.namenode.http-bind-host</name><value>$HOST</value></property>
  <property><name>dfs.namenode.secondary.http-address</name><value>$HOST:0</value></property>
  <property><name>dfs.datanode.address</name><value>$HOST:$DN_PORT</value></property>
  <property><name>dfs.datanode.http.address</name><value>$HOST:$DN_HTTP_PORT</value></property>
  <property><name>dfs.datanode.ipc.address</name><value>$HOST:$DN_IPC_PORT</value></property>
  <property><name>dfs.datanode.hostname</name><value>$HOST</value></property>
  <property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>
  <!-- WebHDFS needs Jersey 1.x, which the pyspark jar set lacks -->
  <property><name>dfs.webhdfs.enabled</name><value>false</value></property>
  <property><name>dfs.namenode.safemode.extension</name><value>0</value></property>
  <property><name>dfs.namenode.safemode.min.datanodes</name><value>0</value></property>
  <property><name>dfs.heartbeat.interval</name><value>1</value></property>
  <property><name>dfs.namenode.fs-limits.min-block-size</name><value>0</value></property>
  <property><name>dfs.datanode.du.reserved</name><value>0</value></property>
</configuration>
EOF

  cat > "$CONF/log4j.properties" <<'EOF'
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.metrics2.impl.MetricsConfig=ERROR
EOF
}

# Log lines used for readiness (Hadoop 2.7.3).
NN_SAFEMODE_OFF="Leaving safe mode"
NN_DN_REGISTERED="registerDatanode: from DatanodeRegistration("
DN_BLOCK_REPORT="Successfully sent block report"

# The NameNode's latest run has left safe mode.
nn_left_safemode() {
  awk '/STARTUP_MSG: Starting NameNode/ { off = 0 } /Leaving safe mode/ { off = 1 }
       END { exit !off }' "$NN_LOG"
}

# start_nn DEADLINE: launch the NameNode (log appended) and wait for its RPC port.
# Sets NN_OFF to the log offset before launch.
start_nn() {
  local deadline="$1"
  NN_OFF="$(log_size "$NN_LOG")"
  launch namenode "$NN_CLASS" "$NN_LOG"
  wait_until "$deadline" namenode "$NN_LOG" "NameNode RPC port $NN_PORT" port_open "$NN_PORT"
}

start_dn() {
  DN_OFF="$(log_size "$DN_LOG")"
  launch datanode "$DN_CLASS" "$DN_LOG"
}

# ---------------------------------------------------------------- commands --
cmd_start() {
  local t0; t0="$(date +%s.%N)"
  load_ports
  find_java
  ensure_jars
  cmd_stop >/dev/null
  CLEANUP_ROLES=(datanode namenode)
  check_ports_free "$NN_PORT" "$NN_HTTP_PORT" "$DN_PORT" "$DN_HTTP_PORT" "$DN_IPC_PORT"

  rm -rf "$DATA" "$LOGS" "$RUN"
  mkdir -p "$DATA/tmp" "$DATA/name" "$DATA/data" "$LOGS" "$RUN"
  write_config
  save_ports

  local deadline=$(( $(now) + START_TIMEOUT ))
  "$JAVA" "${JOPTS[@]}" -cp "$(classpath)" "$NN_CLASS" -format -nonInteractive -force \
    > "$LOGS/format.log" 2>&1 < /dev/null \
    || fail_with_log "$LOGS/format.log" "formatting the NameNode failed"

  # The DataNode retries until the NameNode listens, so start both JVMs at once.
  NN_OFF=0
  launch namenode "$NN_CLASS" "$NN_LOG"
  start_dn
  wait_until "$deadline" namenode "$NN_LOG" "NameNode RPC port $NN_PORT" port_open "$NN_PORT"
  wait_until "$deadline" namenode "$NN_LOG" "NameNode to leave safe mode" \
    log_has "$NN_LOG" "$NN_OFF" "$NN_SAFEMODE_OFF"
  wait_until "$deadline" datanode "$DN_LOG" "DataNode block report" \
    log_has "$DN_LOG" "$DN_OFF" "$DN_BLOCK_REPORT"
  wait_until "$deadline" namenode "$NN_LOG" "NameNode to register the DataNode" \
    log_has "$NN_LOG" "$NN_OFF" "$NN_DN_REGISTERED"

  printf 'HDFS %s up in %.1fs: hdfs://%s:%s (NameNode pid %s, DataNode pid %s, state %s)\n' \
    "$HADOOP_VERSION" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" \
    "$HOST" "$NN_PORT" "$(pid_of namenode)" "$(pid_of datanode)" "$STATE"
}

cmd_stop() {
  stop_role datanode
  stop_role namenode
}

cmd_status() {
  load_ports recorded
  local role pid port up=0
  for role in namenode datanode; do
    [ "$role" = namenode ] && port="$NN_PORT" || port="$DN_PORT"
    if pid="$(pid_of "$role")"; then
      echo "$role: running (pid $pid, port $port)"
      up=$((up + 1))
    else
      echo "$role: not running"
    fi
  done
  [ "$up" -eq 2 ] || exit 3
}

cmd_env() {
  load_ports recorded
  echo "export CONDUIT_TEST_HDFS=hdfs://$HOST:$NN_PORT"
}

require_started() {
  if [ ! -f "$CONF/hdfs-site.xml" ] || [ ! -d "$DATA/name/current" ]; then
    die "no formatted HDFS under $STATE; run '$PROG start' first"
  fi
}

cmd_start_datanode() {
  load_ports recorded
  require_started
  local pid
  if pid="$(pid_of datanode)"; then echo "datanode already running (pid $pid)"; return 0; fi
  find_java
  CLEANUP_ROLES=(datanode)
  check_ports_free "$DN_PORT" "$DN_HTTP_PORT" "$DN_IPC_PORT"
  local deadline=$(( $(now) + START_TIMEOUT ))
  start_dn
  if pid_of namenode >/dev/null; then
    wait_until "$deadline" datanode "$DN_LOG" "DataNode block report" \
      log_has "$DN_LOG" "$DN_OFF" "$DN_BLOCK_REPORT"
    # A NameNode restarted while no DataNode ran waits in safe mode for this report.
    wait_until "$deadline" namenode "$NN_LOG" "NameNode to leave safe mode" nn_left_safemode
    echo "datanode started (pid $(pid_of datanode)), block report sent"
  else
    wait_until "$deadline" datanode "$DN_LOG" "DataNode IPC port $DN_IPC_PORT" port_open "$DN_IPC_PORT"
    echo "datanode started (pid $(pid_of datanode)); namenode is not running, so no block report yet"
  fi
}

cmd_start_namenode() {
  load_ports recorded
  require_started
  local pid
  if pid="$(pid_of namenode)"; then echo "namenode already running (pid $pid)"; return 0; fi
  find_java
  CLEANUP_ROLES=(namenode)
  check_ports_free "$NN_PORT" "$NN_HTTP_PORT"
  local deadline=$(( $(now) + START_TIMEOUT ))
  local dn_off; dn_off="$(log_size "$DN_LOG")"
  start_nn "$deadline"
  if pid_of datanode >/dev/null; then
    # With blocks stored, safe mode ends only once the DataNode has re-registered
    # and reported them; wait for that report in any case.
    wait_until "$deadline" namenode "$NN_LOG" "NameNode to leave safe mode" \
      log_has "$NN_LOG" "$NN_OFF" "$NN_SAFEMODE_OFF"
    wait_until "$deadline" datanode "$DN_LOG" "DataNode block report to the restarted NameNode" \
      log_has "$DN_LOG" "$dn_off" "$DN_BLOCK_REPORT"
    echo "namenode started (pid $(pid_of namenode)), out of safe mode, datanode re-registered"
  else
    echo "namenode started (pid $(pid_of namenode)); datanode is not running, so it may stay in safe mode until '$PROG start-datanode'"
  fi
}

# signal_role ROLE SIGNAL WHAT: send SIGNAL to ROLE's daemon (pause/resume).
signal_role() {
  local role="$1" sig="$2" what="$3" pid
  pid="$(pid_of "$role")" || die "$role is not running"
  kill "-$sig" "$pid"
  echo "$what $role ($pid)"
}

cmd="${1:-}"
case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  fetch) ensure_jars; echo "jars ready in $LIB" ;;
  classpath) ensure_jars; classpath; echo ;;
  stop-datanode) stop_role datanode ;;
  start-datanode) cmd_start_datanode ;;
  pause-datanode) signal_role datanode STOP paused ;;
  resume-datanode) signal_role datanode CONT resumed ;;
  stop-namenode) stop_role namenode ;;
  start-namenode) cmd_start_namenode ;;
  -h|--help|help) usage ;;
  '') usage >&2; exit 2 ;;
  *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
esac
