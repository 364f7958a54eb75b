#!/usr/bin/env bash
# Installs what fieldgate needs on a fresh Debian machine: Debian packages (as root), then a venv in .venv with the
# core, its native module and every first-party plugin.
#   scripts/bootstrap.sh --for demo    what `fieldgate demo` uses: a C compiler and the venv (scripts/demo.sh)
#   scripts/bootstrap.sh [--for tests] all of that, the test extras and what the tests run: mosquitto, socat,
#                                      libmodbus, chromium, podman, busybox-static, the image tools (scripts/test.sh)
# Safe to run again: it only does what is missing. With everything in place it runs no apt-get and no pip (a stamp
# in .venv remembers what the venv was installed from), so it needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

target=tests
while [ $# -gt 0 ]; do
    case "$1" in
        --for) target=${2:-}; shift 2 || true ;;
        --for=*) target=${1#--for=}; shift ;;
        *) echo "usage: scripts/bootstrap.sh [--for demo|tests]" >&2; exit 2 ;;
    esac
done
case "$target" in demo|tests) ;; *) echo "bootstrap: --for takes demo or tests, not '$target'" >&2; exit 2 ;; esac

python=${PYTHON:-python3}
apt_packages=()
need() {  # need COMMAND PACKAGE…: the packages, unless COMMAND is on the PATH
    local command=$1
    shift
    command -v "$command" >/dev/null || apt_packages+=("$@")
}
static_elf() {  # an executable with no ELF interpreter; ldd (libc-bin, on every Debian) exits 1 for those
    [ -x "$1" ] || return 1
    local said
    said=$(LC_ALL=C ldd "$1" 2>&1 || true)
    [[ $said == *"not a dynamic executable"* || $said == *"statically linked"* ]]
}

# --- the demo: the venv, with the native module built by a C compiler ---------------------------------------------
need cc gcc
if [ "$(command -v "$python")" = /usr/bin/python3 ]; then  # Debian's own Python splits venv and headers out
    "$python" -c "import ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
    "$python" -c "import os, sysconfig; assert os.path.exists(sysconfig.get_paths()['include'] + '/Python.h')" \
        2>/dev/null || apt_packages+=(python3-dev)
fi

# --- the tests: brokers, serial lines, browser, containers, the appliance image -----------------------------------
if [ "$target" = tests ]; then
    need socat socat
    # Offline failover (gateway.uplink.failover): the gateways of a group run etcd members.
    need etcd etcd-server
    [ -x /usr/sbin/mosquitto ] || need mosquitto mosquitto
    need mosquitto_sub mosquitto-clients
    # The OPC UA tests run a node-opcua server, which they install with npm into ~/.cache/fieldgate-tests.
    need node nodejs
    need npm npm
    if [ "${FIELDGATE_BROWSER_TESTS:-1}" = 1 ]; then need chromium chromium; fi
    # The C Modbus TCP simulator (plugins/modbus/sim/modbus_sim.c) the Modbus tests and benchmarks build: libmodbus.
    need pkg-config pkg-config
    pkg-config --exists libmodbus 2>/dev/null || apt_packages+=(libmodbus-dev)
    # The container runtime (plugins/container) and its tests: podman with runc, port mapping, a static busybox image;
    # catatonit for the pause image of pods (podman builds it from catatonit on the node, without a registry).
    need podman podman runc containernetworking-plugins
    need catatonit catatonit
    static_elf /bin/busybox || apt_packages+=(busybox-static)
    # the services tests give a container a UDP client of their own, built static (busybox's nc has no UDP)
    [ -f "$(gcc -print-file-name=libc.a 2>/dev/null)" ] || apt_packages+=(libc6-dev)
    # The appliance image (image/build.sh) and its boot test (tests/image): FIELDGATE_IMAGE_TESTS=0 leaves them out.
    if [ "${FIELDGATE_IMAGE_TESTS:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
        for tool in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 mkfs.vfat:dosfstools mcopy:mtools \
                    sfdisk:fdisk zstd:zstd mkfs.ext4:e2fsprogs mksquashfs:squashfs-tools rauc:rauc \
                    openssl:openssl unsquashfs:squashfs-tools debugfs:e2fsprogs; do
            need "${tool%%:*}" "${tool#*:}"
        done
        [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || apt_packages+=(ovmf)
    fi
fi

if [ ${#apt_packages[@]} -gt 0 ]; then
    mapfile -t apt_packages < <(printf '%s\n' "${apt_packages[@]}" | sort -u)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${apt_packages[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    else
        echo "bootstrap: missing ${apt_packages[*]} (run as root to install them); what needs them fails" >&2
    fi
fi

# --- the venv -----------------------------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# What the installed venv came from: the packaging files and the native sources. The same stamp means nothing to do.
inputs=(pyproject.toml setup.py native/*.[ch] native/*.py plugins/*/pyproject.toml)
stamp=$({ printf '%s\n' "${inputs[@]}"; cat "${inputs[@]}"; .venv/bin/python -V; } 2>/dev/null | sha256sum | cut -c1-64)
if [ "$(cat ".venv/.bootstrap-$target" 2>/dev/null)" = "$stamp" ] \
        || { [ "$target" = demo ] && [ "$(cat .venv/.bootstrap-tests 2>/dev/null)" = "$stamp" ]; }; then
    exit 0  # the tests' venv holds everything the demo needs
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "setuptools>=68" wheel "cffi>=1.16"
core=.
[ "$target" = tests ] && core=".[test]"
editables=(-e "$core")
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && editables+=(-e "$plugin")
done
"${pip[@]}" --no-build-isolation "${editables[@]}"
rm -f .venv/.bootstrap-demo .venv/.bootstrap-tests
echo "$stamp" >".venv/.bootstrap-$target"
