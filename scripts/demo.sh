#!/usr/bin/env bash
# The demo: the gateway against simulated devices, with its web UI and API on http://127.0.0.1:8080/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/fieldgate demo "$@"
