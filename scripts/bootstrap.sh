#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv from the project's own files.
# Idempotent: a stamp holding the hash of pyproject.toml and this script skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${XRETRIEVE_VENV:-.venv}
stamp="$VENV/.xretrieve-stamp"
# The page tests drive Debian's chromium through chromium-driver (never a downloaded browser).
if [ -z "${XRETRIEVE_NO_BROWSER:-}" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian's chromium + chromium-driver (for the page tests)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[bootstrap] chromium/chromium-driver missing (apt-get as root installs them); page tests will skip" >&2
  fi
fi
# The page's pure modules are unit-tested with Node's built-in runner (`node --test`): Debian's nodejs.
if [ -z "${XRETRIEVE_NO_NODE:-}" ] && ! command -v node >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian's nodejs (for node --test)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
  else
    echo "[bootstrap] node missing (apt-get install nodejs as root); the page's unit tests will not run" >&2
  fi
fi
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] setting up $VENV (first run installs torch, a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch/torchvision come first, pinned to the builds that lie on this machine's disk; the
# project install below then finds them satisfied and fetches no other (multi-GB) torch build.
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
