#!/usr/bin/env bash
# The project's one test command: install the test requirements, then run pytest.
#
# Usage: bash scripts/test.sh [pytest arguments]
#   bash scripts/test.sh                      # everything, slow tests included
#   bash scripts/test.sh -m "not slow"        # skip the multi-process tests
#   bash scripts/test.sh tests/test_scripts.py -k lr
# Runs from the repository root (so test paths are relative to it) whatever the cwd.
# Exits with pytest's status (0 all passed, 1 failures, 5 no test collected, ...).
#
# Environment: PYTHON (default python3); TEST_SKIP_INSTALL=1 skips the pip step, e.g.
# on a machine without network where requirements-dev.txt is already installed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}

if [[ ${TEST_SKIP_INSTALL:-0} != 1 ]]; then
    # Already-satisfied requirements need no network, so this is cheap after the first run.
    "$python" -m pip install -q -r requirements-dev.txt || {
        status=$?
        echo "test.sh: error: '$python -m pip install -r requirements-dev.txt' failed (exit $status); fix pip/network access, or set TEST_SKIP_INSTALL=1 if the packages are already installed" >&2
        exit "$status"
    }
fi

exec "$python" -m pytest "$@"
