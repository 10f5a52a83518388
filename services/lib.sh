# shellcheck shell=bash
# Common settings for services/install, services/up and services/down.
# Sourced, not executed.

SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$SERVICES_DIR/versions.env"

STOCKADE_CACHE="${STOCKADE_CACHE:-/var/cache/stockade}"
STOCKADE_STATE="${STOCKADE_STATE:-/tmp/stockade-services}"
STOCKADE_BIN="$STOCKADE_CACHE/bin"
ES_HOME="$STOCKADE_CACHE/elasticsearch-$ES_VERSION"
ES_USER="${STOCKADE_ES_USER:-stockade-es}"
# What each service's command line has that no other stack's has (see pid_alive).
ETCD_PATTERN="--data-dir $STOCKADE_STATE/etcd "
APISERVER_PATTERN="--tls-cert-file $STOCKADE_STATE/pki/apiserver.crt "
ES_PATTERN="-Djava.io.tmpdir=$STOCKADE_STATE/elasticsearch/tmp "

# Fixed loopback ports (override with the env vars).
ETCD_PORT="${STOCKADE_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${STOCKADE_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${STOCKADE_APISERVER_PORT:-16443}"
ES_PORT="${STOCKADE_ES_PORT:-19200}"
ES_TRANSPORT_PORT="${STOCKADE_ES_TRANSPORT_PORT:-19300}"
ES_HEAP="${STOCKADE_ES_HEAP:-1g}"
# 1 = Elasticsearch with security on (TLS on HTTP + basic auth; API keys work).
ES_SECURITY="${STOCKADE_ES_SECURITY:-0}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Prints the JAVA_HOME of a JDK >= 21 (Elasticsearch 9 needs it).
find_es_java_home() {
    local cand v
    for cand in "${STOCKADE_ES_JAVA_HOME:-}" "${ES_JAVA_HOME:-}" "${JAVA_HOME:-}" /usr/lib/jvm/*; do
        [ -n "$cand" ] && [ -x "$cand/bin/java" ] && [ -x "$cand/bin/javac" ] || continue
        v="$("$cand/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
        if [ -n "$v" ] && [ "${v%%.*}" -ge 21 ] 2>/dev/null; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

pid_alive() { # pidfile pattern: its pid runs with pattern in its command line
    # Not any process with that pid: a recycled one, or "-1" from a pid file the
    # Elasticsearch user writes, would have root kill what it names.
    local pid
    [ -s "$1" ] && pid="$(cat "$1")" && [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2"
}
