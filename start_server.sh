#!/usr/bin/env bash
# Start the ETL Task API on Linux/macOS: set up .venv on first run, then run Gunicorn.
# Every setting comes from ETL_* variables or a .env file next to this script (see README).
#   ./start_server.sh                 set up if needed, then serve
#   ./start_server.sh --install-only  set up (or update) .venv and exit
#   ./start_server.sh worker [...]    a Celery worker host (ETL_BACKEND=celery; python -m api worker)
set -euo pipefail

cd "$(dirname "$0")"
VENV=.venv
STAMP="$VENV/.requirements.sha256"

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "start_server.sh: Python 3.11 or newer is required (set PYTHON=/path/to/python3)" >&2
  return 1
}

requirements_hash() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum requirements.txt | cut -d' ' -f1
  else shasum -a 256 requirements.txt | cut -d' ' -f1; fi
}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    python=$(find_python)
    echo "start_server.sh: creating $VENV with $python" >&2
    "$python" -m venv "$VENV"
  fi
  wanted=$(requirements_hash)
  if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$wanted" ]; then
    echo "start_server.sh: installing requirements.txt into $VENV" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
    echo "$wanted" > "$STAMP"
  fi
}

install
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
if [ "${1:-}" = "worker" ]; then
  shift
  exec "$VENV/bin/python" -m api worker "$@"
fi
exec "$VENV/bin/python" -m gunicorn -c gunicorn.conf.py
