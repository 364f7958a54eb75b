#!/usr/bin/env bash
# The demo: the gateway against simulated devices, with its web UI and API on http://127.0.0.1:8080/ (arguments go
# to `fieldgate demo`, e.g. --listen 127.0.0.1:8081). Sets up only what the demo uses; nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --for demo
exec .venv/bin/fieldgate demo "$@"
