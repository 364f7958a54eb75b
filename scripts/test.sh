#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types and every test (benchmarks run on their own:
# .venv/bin/pytest -m benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -p no:cacheprovider "$@"
