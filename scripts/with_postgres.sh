#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster: initdb into a temporary directory as
# the `postgres` user, start it on a free local port, export its URL, run the command,
# then stop and remove the cluster, also when the command fails.
#   scripts/with_postgres.sh make test
set -uo pipefail

find_bin() {
  command -v "$1" 2>/dev/null && return
  ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}
INITDB=$(find_bin initdb)
if [ -z "$INITDB" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's postgresql server..."
  timeout 300 apt-get install -y -q postgresql >/dev/null 2>&1 \
    || { timeout 180 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q postgresql >/dev/null 2>&1; }
  INITDB=$(find_bin initdb)
fi
if [ -z "$INITDB" ]; then
  echo "no PostgreSQL server binaries: running without (PostgreSQL tests will skip)"
  exec "$@"
fi
PG_CTL=$(dirname "$INITDB")/pg_ctl
[ -x "$PG_CTL" ] || PG_CTL=$(find_bin pg_ctl)

AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi   # initdb refuses root
DIR=$(mktemp -d /tmp/pgcluster.XXXXXX)
chmod 755 "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() {
  "${AS[@]}" "$PG_CTL" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$DIR"
}
trap cleanup EXIT

"${AS[@]}" "$INITDB" -D "$DIR/data" -U postgres -A trust --no-sync >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log"; echo "initdb failed: running without PostgreSQL"; "$@"; exit $?; }
"${AS[@]}" "$PG_CTL" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null \
  || { cat "$DIR/server.log"; echo "PostgreSQL did not start: running without it"; "$@"; exit $?; }

export PIPELINE_TEST_PG_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
echo "PostgreSQL $("$(dirname "$PG_CTL")/postgres" --version | awk '{print $3}') on port $PORT"
"$@"
