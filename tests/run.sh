#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them:
#   tests/run.sh [pytest arguments]
# Installs Debian packages the tests use (when apt-get is available), the Python
# requirements into .venv (through start_server.sh --install-only), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: headless Chromium + its driver (portal downloads),
# unixODBC + the SQLite ODBC driver (database loads).
APT_PACKAGES=(chromium chromium-driver unixodbc libsqliteodbc redis-server)

missing=()
if [ ${#APT_PACKAGES[@]} -gt 0 ] && command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo -n)
    echo "tests/run.sh: installing Debian packages: ${missing[*]}" >&2
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: missing system packages ${missing[*]} and no apt-get; the tests that need them will fail" >&2
  fi
fi

./start_server.sh --install-only
exec .venv/bin/python -m pytest tests -p no:cacheprovider --timeout=600 -ra "$@"
