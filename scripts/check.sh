#!/usr/bin/env bash
# Format check, lint and type check: the same script for developers and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff format --check xretrieve tests scripts
.venv/bin/ruff check xretrieve tests scripts
.venv/bin/mypy xretrieve
.venv/bin/lint-imports  # the layout's import rules: [tool.importlinter] in pyproject.toml
.venv/bin/mkdocs build --strict --site-dir build/site  # the docs site: a broken link or a page left out of nav fails
