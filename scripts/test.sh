#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types and every test (benchmarks run on their own:
# .venv/bin/pytest -m benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --for tests
.venv/bin/ruff check .
.venv/bin/mypy
if [ $# -gt 0 ]; then  # a chosen part of the suite: just that
    exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
# The soak tests mostly wait (outages held for minutes), the image tests mostly wait for debootstrap and qemu, and
# the `beside` tests mostly wait on real processes (capped and resetting links, restarts, several gateways): they run
# in a process of their own beside the rest.
soak_dir=$(mktemp -d)
.venv/bin/python -m pytest -p no:cacheprovider -m "(soak or image or beside) and not benchmark" -s --durations=10 \
    --basetemp "$soak_dir/tmp" \
    >"$soak_dir/log" 2>&1 &
soak=$!
status=0
# Each process has a temporary folder of its own: pytest's shared /tmp/pytest-of-<user> keeps only its three newest
# runs, so another pytest started on the machine meanwhile would remove the folders of this one's running tests.
.venv/bin/python -m pytest -p no:cacheprovider -m "not benchmark and not soak and not image and not beside" \
    --durations=10 --basetemp "$soak_dir/main" || status=$?
if wait "$soak"; then
    grep -ho "outage [0-9].*\|image built in [0-9]* s\|image [0-9.]* MB compressed.*\|healthy [0-9.]* s after power-on[^;]*\|power cut with .*\|broken bundle: [a-z-]* after [0-9]* s\|good bundle: [a-z]* after [0-9]* s" \
        "$soak_dir/log" || true
    grep -A10 "slowest 10 durations" "$soak_dir/log" || true
    tail -n 1 "$soak_dir/log"
else
    echo "soak or image tests failed:" >&2
    cat "$soak_dir/log" >&2
    status=1
fi
rm -rf "$soak_dir"
exit $status
