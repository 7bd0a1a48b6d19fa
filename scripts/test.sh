#!/usr/bin/env bash
# The project's one test command: install the test requirements, then run pytest.
#
# Usage: bash scripts/test.sh [pytest arguments]
#   bash scripts/test.sh                      # everything, slow tests included
#   bash scripts/test.sh -m "not slow"        # skip the multi-process tests
#   bash scripts/test.sh tests/test_scripts.py -k lr
#   TEST_WORKERS=0 bash scripts/test.sh       # one test at a time, in one process
# Runs from the repository root (so test paths are relative to it) whatever the cwd.
# Exits with pytest's status (0 all passed, 1 failures, 5 no test collected, ...).
#
# Tests run in parallel, one pytest-xdist worker per CPU core (see TEST_WORKERS): most
# tests spend their time starting Python processes (5 s of imports each) on one core while
# the other waits, so on 2 cores the suite takes about 40% less time than one at a time.
#
# Environment: PYTHON (default python3); TEST_SKIP_INSTALL=1 skips the pip step, e.g.
# on a machine without network where requirements-dev.txt is already installed;
# TEST_WORKERS sets the number of workers (default: the CPU cores this process may use, at
# most 8; 0 runs the tests in this process, one at a time, without pytest-xdist).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}

# Each worker holds torch in memory (about 1 GB with its test's processes): at most 8 by default.
# (GNU nproc reports OMP_NUM_THREADS when it is set: counted without it.)
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
workers=${TEST_WORKERS:-$((cores > 8 ? 8 : cores))}
if ! [[ $workers =~ ^[0-9]+$ ]]; then
    echo "test.sh: error: TEST_WORKERS must be a whole number of pytest workers (0: no parallel workers), got '$workers'" >&2
    exit 2
fi

if [[ ${TEST_SKIP_INSTALL:-0} != 1 ]]; then
    # Already-satisfied requirements need no network, so this is cheap after the first run.
    "$python" -m pip install -q -r requirements-dev.txt || {
        status=$?
        echo "test.sh: error: '$python -m pip install -r requirements-dev.txt' failed (exit $status); fix pip/network access, or set TEST_SKIP_INSTALL=1 if the packages are already installed" >&2
        exit "$status"
    }
fi

if [[ $workers == 0 ]]; then  # no xdist options: runs where pytest-xdist is not installed too
    exec "$python" -m pytest "$@"
fi
# worksteal: a worker that runs out of tests takes some of the other's, so a long test found
# late does not leave one core idle at the end.
exec "$python" -m pytest -n "$workers" --dist worksteal "$@"
