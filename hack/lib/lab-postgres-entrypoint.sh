#!/bin/bash
# Entrypoint of the lab's PostgreSQL image (127.0.0.1:5000/berth/postgres:15), which
# hack/lab builds with debootstrap + `docker import`. It lives in the image as
# /usr/local/bin/berth-postgres-entrypoint.
#
# - First start on an empty data directory: initdb with POSTGRES_USER as the superuser and
#   POSTGRES_PASSWORD as its password, create POSTGRES_DB, listen on all addresses,
#   scram-sha-256 for network clients, trust on the local socket.
#   The cluster is initialised in "$PGDATA.init" and renamed to $PGDATA only when complete,
#   so a container killed half-way through re-initialises instead of starting a half-made
#   cluster.
# - Then runs postgres as the postgres user in the foreground. SIGTERM or SIGINT (docker
#   stop) becomes a fast shutdown (SIGINT to the postmaster), so it finishes well within
#   docker's 10 s grace period even with clients connected.
# - `docker run IMAGE pg_dump ...` (a first argument not starting with '-') runs that
#   command instead, for one-off backup/restore containers. Arguments starting with '-' are
#   passed to postgres (e.g. `-c max_connections=200`).
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
export PGDATA

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$(dirname "$PGDATA")" /run/postgresql
    chown postgres:postgres "$(dirname "$PGDATA")" /run/postgresql
    chmod 2775 /run/postgresql
    if [ -d "$PGDATA" ] && [ "$(stat -c %U "$PGDATA")" != postgres ]; then
        chown -R postgres:postgres "$PGDATA"
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

log() { echo "berth-postgres-entrypoint: $*" >&2; }

init_cluster() {
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "POSTGRES_PASSWORD is required to initialise a new cluster"
        exit 1
    fi
    local tmp="$PGDATA.init" pwfile
    rm -rf "$tmp"
    mkdir -m 700 "$tmp"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    log "initialising a new cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
    "$PGBIN/initdb" -D "$tmp" -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >&2
    rm -f "$pwfile"
    {
        echo "# berth-lab: any network client, with a password"
        echo "host all all all scram-sha-256"
    } >>"$tmp/pg_hba.conf"
    {
        echo "# berth-lab"
        echo "listen_addresses = '*'"
    } >>"$tmp/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        "$PGBIN/pg_ctl" -D "$tmp" -w -o "-c listen_addresses=''" start >&2
        "$PGBIN/psql" -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q \
            -c "CREATE DATABASE \"$POSTGRES_DB\"" >&2
        "$PGBIN/pg_ctl" -D "$tmp" -m fast -w stop >&2
    fi
    mv "$tmp" "$PGDATA"
    log "cluster ready"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    init_cluster
fi

"$PGBIN/postgres" -D "$PGDATA" "$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' TERM INT
# `wait` returns early when a trapped signal arrives; keep waiting until postgres is gone.
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || true
done
status=0
wait "$pid" || status=$?
exit "$status"
