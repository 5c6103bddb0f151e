#!/usr/bin/env bash
# The test command. Runs pytest inside a private, loopback-only network namespace when this
# machine allows it (Linux, root, unshare and ip present), so no test can reach any other host;
# Lattica probes public STUN servers on every start. Elsewhere it runs pytest as is.
# Arguments are passed to pytest.
set -u
cd "$(dirname "$0")/.."
if [ "$(uname)" = Linux ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
  echo "tests/run.sh: running in a private network namespace (loopback only)"
  exec unshare -n sh -c 'ip link set lo up && exec python -m pytest "$@"' sh "$@"
fi
echo "tests/run.sh: no private network namespace here; tests use loopback only"
exec python -m pytest "$@"
