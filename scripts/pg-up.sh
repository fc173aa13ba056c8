#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the `postgres` feature's tests and prints
# the DSN. Same recipe as .ci/run (docs/SCALE_OUT.md): a fresh data
# directory, a private socket directory, no TCP listener, trust auth.
#
#   eval "$(scripts/pg-up.sh)"      # exports DUEWHEEL_PG_DSN, DUEWHEEL_PG_RESTART, PG_DOWN
#   cargo test --release --features postgres --test pg_store
#   eval "$PG_DOWN"                 # stops the server, deletes its files
#
# As root it installs PostgreSQL if missing (Debian) and runs the server as
# the `postgres` user; as any other user it needs `initdb` already installed
# and runs the server as that user.
set -euo pipefail

PORT=${DUEWHEEL_PG_PORT:-54329}

if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends postgresql >&2; }
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  V=$(ls /usr/lib/postgresql | sort -V | tail -1); BIN=/usr/lib/postgresql/$V/bin
elif command -v initdb >/dev/null 2>&1; then
  BIN=$(dirname "$(command -v initdb)")
else
  echo "pg-up: initdb not found; install PostgreSQL first" >&2; exit 1
fi

DIR=$(mktemp -d); mkdir -p "$DIR/sock"
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$DIR"; fi
chmod 700 "$DIR"
as_pg "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DIR/sock -c listen_addresses=" start >&2

if [ "$(id -u)" = 0 ]; then AS_PG="runuser -u postgres -- "; else AS_PG=""; fi
STOP="$AS_PG$BIN/pg_ctl -D $DIR/data -m fast -w stop; rm -rf $DIR"
# A restart with the same options (tests/cluster_nodes.rs takes the database
# away under running nodes with it).
RESTART="$AS_PG\"$BIN/pg_ctl\" -D \"$DIR/data\" -l \"$DIR/server.log\" -w -t 60 -m fast -o \"-p $PORT -k $DIR/sock -c listen_addresses=\" restart"
echo "export DUEWHEEL_PG_DSN='host=$DIR/sock port=$PORT user=postgres dbname=postgres'"
echo "export PG_DOWN='$STOP'"
echo "export DUEWHEEL_PG_RESTART='$RESTART'"
echo "# server log: $DIR/server.log" 
