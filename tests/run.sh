#!/usr/bin/env bash
# The test command. Runs pytest inside a private, loopback-only network namespace when this
# machine allows it (Linux, root, unshare and ip present), so no test can reach any other host;
# Lattica probes public STUN servers on every start. Elsewhere it runs pytest as is.
# Arguments are passed to pytest.
#
# The whole suite (no test paths, -k or -m among the arguments) also runs the app under
# `briefcase dev --test` (tests/test_briefcase_dev.py). Briefcase installs that environment from
# the package index, which the namespace cannot reach, so it is made here first, with torch pinned
# to this Python's version: a minute or two the first time, under a second while the requirements
# are unchanged. POTLUCK_BRIEFCASE_DEV=1 makes it for any selection, POTLUCK_BRIEFCASE_DEV=0 never.
set -u
cd "$(dirname "$0")/.."
whole_suite=1
for arg in "$@"; do
  case "$arg" in
    -k|-k*|-m|-m*) whole_suite=0 ;;
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then whole_suite=0; fi ;;
  esac
done
export POTLUCK_BRIEFCASE_DEV="${POTLUCK_BRIEFCASE_DEV:-$whole_suite}"
if [ "$POTLUCK_BRIEFCASE_DEV" = 1 ]; then
  python installers/build.py --dev-setup --pin-installed torch \
    || echo "tests/run.sh: that failed; tests/test_briefcase_dev.py will fail, the other tests run"
fi
if [ "$(uname)" = Linux ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
  echo "tests/run.sh: running in a private network namespace (loopback only)"
  exec unshare -n sh -c 'ip link set lo up && exec python -m pytest "$@"' sh "$@"
fi
echo "tests/run.sh: no private network namespace here; tests use loopback only"
exec python -m pytest "$@"
