#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the `postgres` feature's tests and prints
# the DSN. Same recipe as .ci/run (docs/SCALE_OUT.md): a fresh data
# directory, a private socket directory, no TCP listener, trust auth.
#
#   eval "$(scripts/pg-up.sh)"      # exports DUEWHEEL_PG_DSN, DUEWHEEL_PG_RESTART, PG_DOWN
#   cargo test --release --features postgres --test pg_store
#   eval "$PG_DOWN"                 # stops the server, deletes its files
#
# With DUEWHEEL_PG_TLS=1 (needs `openssl`) it also listens on
# 127.0.0.1:<port> with TLS on (a throwaway CA and a server certificate for
# `localhost`) and exports DUEWHEEL_PG_TLS_DSN (sslmode=require with that
# CA as sslrootcert), DUEWHEEL_PG_TLS_WRONG_CA (an unrelated CA, for the
# refusal test) and DUEWHEEL_PG_PW_DSN: the role `duewheel_pw`, password
# `duewheel-test-password`, which must authenticate by scram over TCP (the
# DSN carries no password: the credentials tests supply it).
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
OPTS="-p $PORT -k $DIR/sock -c listen_addresses="
if [ "${DUEWHEEL_PG_TLS:-}" = 1 ]; then
  command -v openssl >/dev/null || { echo "pg-up: DUEWHEEL_PG_TLS=1 needs openssl" >&2; exit 1; }
  T=$DIR/tls; mkdir -p "$T"
  ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
      -subj "/CN=$1" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign -keyout "$T/$1.key" -out "$T/$1.crt" 2>/dev/null; }
  ca duewheel-test-ca; ca duewheel-wrong-ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
      -keyout "$T/server.key" -out "$T/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$T/ext"
  openssl x509 -req -in "$T/server.csr" -CA "$T/duewheel-test-ca.crt" -CAkey "$T/duewheel-test-ca.key" \
      -CAcreateserial -days 7 -extfile "$T/ext" -out "$T/server.crt" 2>/dev/null
  chmod 600 "$T/server.key"; chmod 644 "$T"/*.crt
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$T"; fi
  # The password role authenticates by scram over TCP; everything else as before.
  sed -i '1i host all duewheel_pw 127.0.0.1/32 scram-sha-256' "$DIR/data/pg_hba.conf"
  OPTS="-p $PORT -k $DIR/sock -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=$T/server.crt -c ssl_key_file=$T/server.key"
fi
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 -o "$OPTS" start >&2
if [ "${DUEWHEEL_PG_TLS:-}" = 1 ]; then
  as_pg "$BIN/psql" -q -h "$DIR/sock" -p "$PORT" -U postgres -d postgres -c \
    "CREATE ROLE duewheel_pw LOGIN PASSWORD 'duewheel-test-password'; GRANT CREATE ON DATABASE postgres TO duewheel_pw;" >&2
fi

if [ "$(id -u)" = 0 ]; then AS_PG="runuser -u postgres -- "; else AS_PG=""; fi
STOP="$AS_PG$BIN/pg_ctl -D $DIR/data -m fast -w stop; rm -rf $DIR"
# A restart with the same options (tests/cluster_nodes.rs takes the database
# away under running nodes with it).
RESTART="$AS_PG\"$BIN/pg_ctl\" -D \"$DIR/data\" -l \"$DIR/server.log\" -w -t 60 -m fast -o \"$OPTS\" restart"
echo "export DUEWHEEL_PG_DSN='host=$DIR/sock port=$PORT user=postgres dbname=postgres'"
echo "export PG_DOWN='$STOP'"
echo "export DUEWHEEL_PG_RESTART='$RESTART'"
if [ "${DUEWHEEL_PG_TLS:-}" = 1 ]; then
  echo "export DUEWHEEL_PG_TLS_DSN='host=localhost port=$PORT user=postgres dbname=postgres sslmode=require sslrootcert=$T/duewheel-test-ca.crt'"
  echo "export DUEWHEEL_PG_TLS_WRONG_CA='$T/duewheel-wrong-ca.crt'"
  echo "export DUEWHEEL_PG_PW_DSN='host=localhost port=$PORT user=duewheel_pw dbname=postgres'"
fi
echo "# server log: $DIR/server.log" 
