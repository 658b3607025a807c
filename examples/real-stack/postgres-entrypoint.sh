#!/bin/sh
# The postgres image's entrypoint, after the official image's
# docker-entrypoint.sh (reduced): on the first start with an empty $PGDATA,
# initdb (superuser password from POSTGRES_PASSWORD), allow password logins
# from the network, create POSTGRES_DB; then exec the command (the server) as
# PID 1 so it gets the stop signal (SIGINT: fast shutdown).
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags
    initdb --username=postgres --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        psql -h /tmp -v ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    pg_ctl -D "$PGDATA" -w -m fast stop
    echo "postgres-entrypoint: initialised $PGDATA"
fi
exec "$@"
