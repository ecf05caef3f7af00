#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against rtserve's echo app (bench/autobahn_echo.py).
# usage: bench/autobahn.sh [quick|ci|full] [OUTDIR]   (needs ../shared/autobahn and Python 2.7)
# Exits non-zero when any case FAILED. Traffic stays on 127.0.0.1; the server is stopped after.
set -euo pipefail
MODE=${1:-ci}; OUT=${2:-$(mktemp -d)/autobahn}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${OUT%/*}"
SHARED=${AUTOBAHN_DIR:-$ROOT/../shared/autobahn}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cd "$ROOT"
"$PY" -m rtserve run bench.autobahn_echo:app --host 127.0.0.1 --port "$PORT" --no-access-log \
  > "${OUT%/*}/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do  # bounded: at most 10 s for the server to listen
  "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.1)" 2>/dev/null && break
  sleep 0.1
done
bash "$SHARED/run.sh" "ws://127.0.0.1:$PORT/" "$MODE" "$OUT"
