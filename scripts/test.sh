#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed): everything but the tests marked slow,
# with the 20 slowest listed. Extra arguments go to pytest and win over these, e.g.
# `bash scripts/test.sh -m slow` for the slow remainder, `-m ""` for every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -m "not slow" --durations=20 "$@"
