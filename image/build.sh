#!/usr/bin/env bash
# Builds the fieldgate appliance image: a GPT disk with an EFI system partition (systemd-boot, the kernel, the
# provisioning file), a root partition (Debian bookworm, the cloud kernel, mosquitto, fieldgate in the A/B slots
# /opt/fieldgate/a|b with /opt/fieldgate/current) and a data partition for /var/lib/fieldgate that upgrades never
# touch. Writes <out>/fieldgate-<version>-<arch>.img.zst and its .sha256. Run as root; see README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: image/build.sh [--arch amd64|arm64] [--out DIR] [--provision FILE] [--mirror URL] [--cache DIR] [--keep-raw]
  --arch       target architecture (default amd64; arm64 needs qemu-user-static and binfmt_misc)
  --out        where the image goes (default build/image)
  --provision  a provisioning file to put on the boot partition (see image/provision.example.yaml)
  --mirror     Debian mirror (default http://deb.debian.org/debian)
  --cache      keep the debootstrapped root here and reuse it while the package list is unchanged
  --keep-raw   also keep the uncompressed .img
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
arch=amd64
out=$repo/build/image
provision=""
mirror=http://deb.debian.org/debian
cache=""
keep_raw=0
suite=bookworm
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --provision) provision=${2:?--provision needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a value}; shift 2 ;;
        --cache) cache=${2:?--cache needs a value}; shift 2 ;;
        --keep-raw) keep_raw=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

fail() { echo "build.sh: $*" >&2; exit 2; }
started=$(date +%s)
step() { printf '[%4ds] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

case $arch in
    amd64) efi_arch=x64; kernel=linux-image-cloud-amd64; root_type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
           wheel_platform=x86_64 ;;
    arm64) efi_arch=aa64; kernel=linux-image-cloud-arm64; root_type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE
           wheel_platform=aarch64 ;;
    *) fail "--arch $arch: use amd64 or arm64" ;;
esac

[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap, chroot and file ownership in the image need it)"
missing=()
for tool in debootstrap chroot mkfs.ext4 mkfs.vfat mmd mcopy sfdisk zstd sha256sum truncate dd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]} (apt-get install debootstrap e2fsprogs dosfstools mtools fdisk zstd)"
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3 || true)
[ -n "$python" ] || fail "missing python3 (it builds the wheels)"
"$python" -m pip --version >/dev/null 2>&1 || fail "missing pip for $python (it builds the wheels)"
if [ -n "$provision" ]; then
    [ -f "$provision" ] || fail "--provision $provision: no such file"
    if PYTHONPATH=$repo "$python" -c 'import gateway' 2>/dev/null; then  # checked now rather than at first boot
        PYTHONPATH=$repo "$python" "$here/provision.py" --check --file "$provision" >/dev/null || exit 2
    fi
fi
host_arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
if [ "$arch" != "$host_arch" ]; then
    [ -e "/proc/sys/fs/binfmt_misc/qemu-aarch64" ] \
        || fail "--arch $arch on $host_arch: missing binfmt_misc qemu-aarch64 (apt-get install qemu-user-static binfmt-support)"
fi

version=$("$python" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read())[1])' \
    "$repo/gateway/__init__.py")
name=fieldgate-$version-$arch
mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
root=$work/root
cleanup() {
    [ -n "${wheels_pid:-}" ] && kill "$wheels_pid" 2>/dev/null
    # A failed debootstrap can leave proc and sys mounted inside the root: unmount the whole tree.
    mountpoint -q "$root" 2>/dev/null && { umount -R "$root" 2>/dev/null || umount -R -l "$root"; }
    rm -rf "$work"
}
trap cleanup EXIT

# --- wheels ----------------------------------------------------------------------------------------------------
wheels=$work/wheels
mkdir -p "$wheels"
plugins=()
for plugin in "$repo"/plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && plugins+=("$plugin")
done
image_python=3.11  # bookworm's python3
host_python=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
build_in_image=0
[ "$arch" = "$host_arch" ] && [ "$host_python" = "$image_python" ] || build_in_image=1
build_wheels() {
    if [ "$build_in_image" = 0 ]; then
        # Same interpreter and C library family as the image: the native module built here runs there.
        "$python" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wheels" "$repo" "${plugins[@]}"
    else
        # The dependencies as binary wheels for the image's python; fieldgate itself (its C module) is built inside
        # the image, emulated.
        "$python" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$wheels" "${plugins[@]}"
        # Third-party requirements of the core and the plugins, from their pyproject.toml files.
        "$python" -c 'import re, sys, tomllib
for path in sys.argv[1:]:
    for requirement in tomllib.load(open(path, "rb"))["project"].get("dependencies", []):
        if not re.match(r"fieldgate\b", requirement):
            print(requirement)' "$repo/pyproject.toml" "${plugins[@]/%//pyproject.toml}" > "$work/requirements.txt"
        printf '%s\n' "setuptools>=68" wheel >> "$work/requirements.txt"  # to build the core in the image
        "$python" -m pip download -q --disable-pip-version-check --dest "$wheels" --only-binary=:all: \
            --python-version "$image_python" --implementation cp --platform "manylinux_2_36_$wheel_platform" \
            --platform "manylinux_2_34_$wheel_platform" --platform "manylinux_2_28_$wheel_platform" \
            --platform "manylinux2014_$wheel_platform" --platform any -r "$work/requirements.txt" \
            || fail "no binary wheels for python $image_python on $arch (pip download failed)"
        tar -C "$repo" --exclude=__pycache__ --exclude='*.so' --exclude='*.o' -cf "$work/source.tar" \
            pyproject.toml setup.py README.md gateway native
    fi
}
step "wheels: fieldgate $version, ${#plugins[@]} plugins and their dependencies (beside the debootstrap)"
build_wheels > "$work/wheels.log" 2>&1 &
wheels_pid=$!

# --- root file system ------------------------------------------------------------------------------------------
packages=systemd,systemd-sysv,udev,kmod,$kernel,systemd-boot-efi,python3,python3-venv,mosquitto,iproute2
if [ "$build_in_image" = 1 ]; then
    packages=$packages,gcc,libc6-dev,python3-dev,libffi-dev
fi
cache_key=$(printf '%s\n' "$suite" "$arch" "$packages" "$mirror" | sha256sum | cut -c1-16)
cached=${cache:+$cache/rootfs-$arch-$cache_key.tar.zst}
mkdir -p "$root"
available_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
if [ "${available_kib:-0}" -gt $(( 4 * 1024 * 1024 )) ]; then
    mount -t tmpfs -o size=3g,mode=755 fieldgate-root "$root"  # dpkg's many fsyncs cost nothing there
fi
if [ -n "$cached" ] && [ -f "$cached" ]; then
    step "root: unpacking the cached debootstrap $cached"
    tar -C "$root" --zstd -xpf "$cached"
else
    step "root: debootstrap $suite $arch (1-3 minutes on amd64; arm64 runs emulated, about 15 minutes)"
    debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$root" "$mirror" \
        > "$work/debootstrap.log" 2>&1 || {
            tail -5 "$work/debootstrap.log" >&2
            { grep -B2 -A8 -i "error" "$root/debootstrap/debootstrap.log" 2>/dev/null || true; } | tail -30 >&2
            fail "debootstrap failed (log above)"; }
    if [ -n "$cached" ]; then
        mkdir -p "$cache"
        tar -C "$root" --zstd -cpf "$cached.tmp" . && mv "$cached.tmp" "$cached"
    fi
fi

wait "$wheels_pid" || { grep -v 'is ignored: it is neither' "$work/wheels.log" | tail -20 >&2
                        wheels_pid=""; fail "building the wheels failed (log above)"; }
wheels_pid=""
step "root: users, units, network, mosquitto"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
echo fieldgate > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 fieldgate\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"
in_root useradd --system --home-dir /var/lib/fieldgate --no-create-home --shell /usr/sbin/nologin \
    --groups dialout fieldgate
uid=$(in_root id -u fieldgate)
gid=$(in_root id -g fieldgate)
install -d -m 755 "$root/etc/fieldgate" "$root/usr/lib/fieldgate" "$root/boot/efi" "$root/opt/fieldgate" \
    "$root/etc/systemd/network" "$root/usr/share/doc/fieldgate"
install -d -m 750 -o "$uid" -g "$gid" "$root/var/lib/fieldgate"
install -m 644 "$here/gateway.yaml" "$root/etc/fieldgate/gateway.yaml"
install -m 644 "$here/fieldgate.service" "$here/fieldgate-firstboot.service" "$root/etc/systemd/system/"
install -m 644 "$here/provision.py" "$root/usr/lib/fieldgate/provision.py"
install -m 644 "$here/provision.example.yaml" "$root/usr/share/doc/fieldgate/"
install -m 644 "$repo/docs/systemd.md" "$root/usr/share/doc/fieldgate/"
install -m 644 "$here/network.conf" "$root/etc/systemd/network/20-wired.network"
install -m 644 "$here/mosquitto.conf" "$root/etc/mosquitto/conf.d/fieldgate.conf"
in_root systemctl enable systemd-networkd.service mosquitto.service fieldgate-firstboot.service fieldgate.service \
    >/dev/null 2>&1 || fail "systemctl enable in the image's root failed"

# --- the A/B slots ---------------------------------------------------------------------------------------------
step "slots: /opt/fieldgate/a (installed) and /opt/fieldgate/b (empty), current -> a"
cp -r "$wheels" "$root/tmp/fieldgate-wheels"
if [ -f "$work/source.tar" ]; then
    mkdir -p "$root/tmp/fieldgate-src"
    tar -C "$root/tmp/fieldgate-src" -xf "$work/source.tar"
    in_root python3 -m venv /tmp/fieldgate-build
    in_root /tmp/fieldgate-build/bin/pip install -q --disable-pip-version-check --no-index \
        --find-links /tmp/fieldgate-wheels "setuptools>=68" wheel cffi
    in_root /tmp/fieldgate-build/bin/pip wheel -q --disable-pip-version-check --no-index --no-deps \
        --no-build-isolation --wheel-dir /tmp/fieldgate-wheels /tmp/fieldgate-src
    rm -rf "$root/tmp/fieldgate-build"
    in_root apt-get purge -y -qq --auto-remove gcc libc6-dev python3-dev libffi-dev >/dev/null
fi
dists=(fieldgate)
for whl in "$root"/tmp/fieldgate-wheels/fieldgate_*.whl; do
    [ -e "$whl" ] || continue
    base=$(basename "$whl")
    dists+=("${base%%-*}")
done
in_root python3 -m venv /opt/fieldgate/a
in_root python3 -m venv /opt/fieldgate/b
in_root /opt/fieldgate/a/bin/pip install -q --no-cache-dir --disable-pip-version-check --no-index \
    --find-links /tmp/fieldgate-wheels "${dists[@]//_/-}"
ln -sfn a "$root/opt/fieldgate/current"
in_root /opt/fieldgate/current/bin/python -c 'import gateway._native' \
    || fail "the native module does not load on the image's python3"
in_root /opt/fieldgate/current/bin/fieldgate check /etc/fieldgate >/dev/null \
    || fail "fieldgate check /etc/fieldgate fails in the image"
rm -rf "$root/tmp/fieldgate-wheels" "$root/tmp/fieldgate-src"
rm -rf "$root"/usr/share/doc/*/changelog* "$root"/usr/share/man/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/var/log/*.log

# --- partitions ------------------------------------------------------------------------------------------------
step "disk: partitions, file systems, systemd-boot"
esp_uuid=$(cat /proc/sys/kernel/random/uuid)
root_uuid=$(cat /proc/sys/kernel/random/uuid)
data_uuid=$(cat /proc/sys/kernel/random/uuid)
cat > "$root/etc/fstab" <<EOF
PARTUUID=$root_uuid / ext4 rw,errors=remount-ro 0 1
PARTUUID=$esp_uuid /boot/efi vfat umask=0077 0 2
PARTUUID=$data_uuid /var/lib/fieldgate ext4 rw,nosuid,nodev 0 2
EOF
mib=$((1024 * 1024))
esp_mib=128
data_mib=256
used_mib=$(( $(du -sxm "$root" | cut -f1) ))
root_mib=$(( used_mib + used_mib / 3 + 384 ))  # room for the second slot and the journal
disk_mib=$(( 1 + esp_mib + root_mib + data_mib + 1 ))

kernel_image=$(find "$root/boot" -maxdepth 1 -name 'vmlinu*-*' | sort | tail -1)
initrd_image=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -1)
[ -f "$kernel_image" ] && [ -f "$initrd_image" ] || fail "no kernel or initrd in the root ($kernel)"
loader=$root/usr/lib/systemd/boot/efi/systemd-boot$efi_arch.efi
[ -f "$loader" ] || fail "no systemd-boot loader in the root ($loader)"
console=ttyS0
[ "$arch" = arm64 ] && console=ttyAMA0
mkdir -p "$work/esp/loader/entries"
printf 'default fieldgate.conf\ntimeout 0\n' > "$work/esp/loader/loader.conf"
cat > "$work/esp/loader/entries/fieldgate.conf" <<EOF
title fieldgate $version
linux /vmlinuz
initrd /initrd.img
options root=PARTUUID=$root_uuid rw console=tty0 console=$console,115200 quiet
EOF
esp=$work/esp.img
mkfs.vfat -C -F 32 -n FIELDGATE "$esp" $(( esp_mib * 1024 )) >/dev/null
upper_efi_arch=$(echo "$efi_arch" | tr a-z A-Z)
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries
mcopy -i "$esp" "$loader" "::/EFI/BOOT/BOOT$upper_efi_arch.EFI"
mcopy -i "$esp" "$loader" "::/EFI/systemd/systemd-boot$efi_arch.efi"
mcopy -i "$esp" "$work/esp/loader/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/esp/loader/entries/fieldgate.conf" ::/loader/entries/fieldgate.conf
mcopy -i "$esp" "$kernel_image" ::/vmlinuz
mcopy -i "$esp" "$initrd_image" ::/initrd.img
mcopy -i "$esp" "$here/provision.example.yaml" ::/fieldgate-provision.example.yaml
[ -n "$provision" ] && mcopy -i "$esp" "$provision" ::/fieldgate-provision.yaml

mkfs.ext4 -q -F -L fieldgate-root -d "$root" "$work/root.img" "${root_mib}M" >/dev/null
mkdir -p "$work/data"
mkfs.ext4 -q -F -L fieldgate-data -E "root_owner=$uid:$gid" -d "$work/data" "$work/data.img" "${data_mib}M" >/dev/null

disk=$work/$name.img
truncate -s "${disk_mib}M" "$disk"
esp_start=$(( mib / 512 ))
root_start=$(( esp_start + esp_mib * mib / 512 ))
data_start=$(( root_start + root_mib * mib / 512 ))
sfdisk -q "$disk" <<EOF
label: gpt
start=$esp_start, size=$(( esp_mib * mib / 512 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_uuid, name=esp
start=$root_start, size=$(( root_mib * mib / 512 )), type=$root_type, uuid=$root_uuid, name=root
start=$data_start, size=$(( data_mib * mib / 512 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$data_uuid, name=data
EOF
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$(( 1 + esp_mib )) conv=notrunc,sparse status=none
dd if="$work/data.img" of="$disk" bs=1M seek=$(( 1 + esp_mib + root_mib )) conv=notrunc,sparse status=none

# --- output ----------------------------------------------------------------------------------------------------
step "output: zstd and sha256"
zstd -q -T0 -3 -f "$disk" -o "$out/$name.img.zst"
(cd "$out" && sha256sum "$name.img.zst" > "$name.img.zst.sha256")
if [ "$keep_raw" = 1 ]; then mv "$disk" "$out/$name.img"; fi
size=$(du -m "$out/$name.img.zst" | cut -f1)
step "done: $out/$name.img.zst (${size} MiB compressed, ${disk_mib} MiB disk, root ${used_mib} MiB used)"
