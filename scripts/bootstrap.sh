#!/usr/bin/env bash
# Installs what fieldgate needs on a fresh machine: Debian packages (as root), a venv in .venv with the core,
# its native module and every first-party plugin. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v socat >/dev/null || apt_packages+=(socat)
command -v mosquitto >/dev/null || apt_packages+=(mosquitto mosquitto-clients)
command -v cc >/dev/null || apt_packages+=(gcc)
if [ "${FIELDGATE_BROWSER_TESTS:-1}" = 1 ] && ! command -v chromium >/dev/null; then apt_packages+=(chromium); fi
# The container runtime (plugins/container) and its tests: podman with runc, port mapping, a static busybox image.
command -v podman >/dev/null || apt_packages+=(podman runc containernetworking-plugins)
[ -x /bin/busybox ] && ! grep -q ld-linux /bin/busybox || apt_packages+=(busybox-static)
# The appliance image (image/build.sh) and its boot test (tests/image): FIELDGATE_IMAGE_TESTS=0 leaves them out.
if [ "${FIELDGATE_IMAGE_TESTS:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
    for need in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 mkfs.vfat:dosfstools mcopy:mtools \
                sfdisk:fdisk zstd:zstd mkfs.ext4:e2fsprogs; do
        command -v "${need%%:*}" >/dev/null || apt_packages+=("${need#*:}")
    done
    [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || apt_packages+=(ovmf)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${apt_packages[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    else
        echo "bootstrap: missing ${apt_packages[*]} (run as root to install them); the tests needing them fail" >&2
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "setuptools>=68" wheel "cffi>=1.16"
editables=(-e ".[test]")
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && editables+=(-e "$plugin")
done
"${pip[@]}" --no-build-isolation "${editables[@]}"
