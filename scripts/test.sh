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
# in two processes of their own beside the rest, the image tests in one (a qemu takes a core) and the others in the
# other. Each prints its slowest tests at the end of its log.
side_dir=$(mktemp -d)
.venv/bin/python -m pytest -p no:cacheprovider -m "image and not benchmark" -s --durations=8 \
    --basetemp "$side_dir/image-tmp" >"$side_dir/image.log" 2>&1 &
image=$!
.venv/bin/python -m pytest -p no:cacheprovider -m "(soak or beside) and not image and not benchmark" -s --durations=8 \
    --basetemp "$side_dir/soak-tmp" >"$side_dir/soak.log" 2>&1 &
soak=$!
status=0
# Each process has a temporary folder of its own: pytest's shared /tmp/pytest-of-<user> keeps only its three newest
# runs, so another pytest started on the machine meanwhile would remove the folders of this one's running tests.
.venv/bin/python -m pytest -p no:cacheprovider -m "not benchmark and not soak and not image and not beside" \
    --durations=8 --basetemp "$side_dir/main" || status=$?
for part in soak image; do
    pid=$soak
    [ "$part" = image ] && pid=$image
    if wait "$pid"; then
        grep -ho "outage [0-9].*\|image built in [0-9]* s\|image [0-9.]* MB compressed.*\|healthy [0-9.]* s after power-on[^;]*\|power cut with .*\|broken bundle: [a-z-]* after [0-9]* s\|good bundle: [a-z]* after [0-9]* s" \
            "$side_dir/$part.log" || true
        grep -A9 "slowest 8 durations" "$side_dir/$part.log" || true
        tail -n 1 "$side_dir/$part.log"
    else
        echo "$part tests failed:" >&2
        cat "$side_dir/$part.log" >&2
        status=1
    fi
done
rm -rf "$side_dir"
exit $status
