#!/usr/bin/env bash
# Builds the fieldgate appliance image: a GPT disk with an EFI system partition (systemd-boot with one boot entry
# per system slot, each slot's kernel and initrd, the provisioning file), two root slots root-a and root-b (a
# read-only squashfs of Debian bookworm trimmed to what the appliance runs: the kernel, mosquitto, fieldgate in the
# gateway slots /opt/fieldgate/a|b with /opt/fieldgate/current; root-b empty until a system update writes it) and
# a data partition, mounted at /data by the initramfs, holding /var/lib/fieldgate and the writable layers over
# /etc, /var and /opt/fieldgate. Writes <out>/fieldgate-<version>-<arch>.img.zst and its .sha256, and fails when
# the compressed image exceeds the size budget; beside it the same system as a signed RAUC bundle,
# <out>/fieldgate-os-<system version>-<arch>.raucb, which updates a running appliance's other slot (see
# gateway/ops/osupdate.py). Run as root; see README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: image/build.sh [--arch amd64|arm64] [--out DIR] [--provision FILE] [--mirror URL] [--cache DIR] [--keep-raw]
                      [--max-compressed-mib N] [--system-version V] [--signing-dir DIR]
  --arch       target architecture (default amd64; arm64 needs qemu-user-static and binfmt_misc)
  --out        where the image goes (default build/image)
  --provision  a provisioning file to put on the boot partition (see image/provision.example.yaml)
  --mirror     Debian mirror (default http://deb.debian.org/debian)
  --cache      keep the debootstrapped root here and reuse it while the package list is unchanged
  --keep-raw   also keep the uncompressed .img
  --max-compressed-mib
               the size budget: fail when the compressed image is larger (default 100 for amd64, 0 for none)
  --system-version
               the system's version, in the image and in its bundle's manifest (default: fieldgate's version)
  --signing-dir
               the bundle's signing certificate and key and the CA that the image trusts (signing.cert.pem,
               signing.key.pem, ca.cert.pem); made there as a development CA when absent (default
               build/image-keys). Production images use your own CA: put its files there before building.
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
max_compressed_mib=""
system_version=""
signing_dir=$repo/build/image-keys
suite=bookworm
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --provision) provision=${2:?--provision needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a value}; shift 2 ;;
        --cache) cache=${2:?--cache needs a value}; shift 2 ;;
        --keep-raw) keep_raw=1; shift ;;
        --max-compressed-mib) max_compressed_mib=${2:?--max-compressed-mib needs a value}; shift 2 ;;
        --system-version) system_version=${2:?--system-version needs a value}; shift 2 ;;
        --signing-dir) signing_dir=${2:?--signing-dir needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

fail() { echo "build.sh: $*" >&2; exit 2; }
started=$(date +%s)
step() { printf '[%4ds] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

case $arch in
    # amd64 carries Debian's generic kernel (USB, serial adapters, wired NICs, i2c/spi/gpio), trimmed below to what
    # an edge box uses; the cloud kernel has none of those drivers.
    amd64) efi_arch=x64; kernel=linux-image-amd64; root_type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
           wheel_platform=x86_64; default_budget=100 ;;
    arm64) efi_arch=aa64; kernel=linux-image-cloud-arm64; root_type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE
           wheel_platform=aarch64; default_budget=0 ;;
    *) fail "--arch $arch: use amd64 or arm64" ;;
esac
max_compressed_mib=${max_compressed_mib:-$default_budget}
case $max_compressed_mib in
    ''|*[!0-9]*) fail "--max-compressed-mib $max_compressed_mib: a whole number of MiB (0 for no budget)" ;;
esac

[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap, chroot and file ownership in the image need it)"
missing=()
for tool in debootstrap:debootstrap chroot:coreutils mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mmd:mtools mcopy:mtools \
            sfdisk:fdisk zstd:zstd sha256sum:coreutils truncate:coreutils dd:coreutils mksquashfs:squashfs-tools \
            rauc:rauc openssl:openssl; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool%%:*} (${tool#*:})")
done
[ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]}; apt-get install debootstrap e2fsprogs dosfstools mtools fdisk zstd squashfs-tools rauc openssl (scripts/bootstrap.sh does, as root)"
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
system_version=${system_version:-$version}
case $system_version in
    *[!A-Za-z0-9.+~_-]*|'') fail "--system-version $system_version: letters, digits and . + ~ _ - only" ;;
esac
compatible=fieldgate-appliance-$arch
mkdir -p "$out"

# --- the bundle's signing keys ----------------------------------------------------------------------------------
# The image trusts ca.cert.pem (its RAUC keyring); bundles are signed with signing.key.pem, certified by that CA.
if [ ! -e "$signing_dir/ca.cert.pem" ]; then
    step "keys: a development CA and bundle signing certificate in $signing_dir (bring your own for production)"
    install -d -m 700 "$signing_dir"
    (
        cd "$signing_dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/O=fieldgate/CN=fieldgate development system CA" -keyout ca.key.pem -out ca.cert.pem \
            -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/O=fieldgate/CN=fieldgate development bundle signing" -keyout signing.key.pem -out signing.csr
        printf 'basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n' > signing.ext
        openssl x509 -req -in signing.csr -CA ca.cert.pem -CAkey ca.key.pem -CAcreateserial -days 3650 \
            -extfile signing.ext -out signing.cert.pem
        rm -f signing.csr signing.ext
    ) > /dev/null 2>&1 || fail "making the development signing keys in $signing_dir failed"
fi
for file in ca.cert.pem signing.cert.pem signing.key.pem; do
    [ -f "$signing_dir/$file" ] || fail "--signing-dir $signing_dir: no $file"
done
openssl verify -CAfile "$signing_dir/ca.cert.pem" "$signing_dir/signing.cert.pem" >/dev/null 2>&1 \
    || fail "--signing-dir $signing_dir: signing.cert.pem is not certified by ca.cert.pem"

work=$(mktemp -d "$out/.work.XXXXXX")
root=$work/root
cleanup() {
    [ -n "${wheels_pid:-}" ] && kill "$wheels_pid" 2>/dev/null
    mountpoint -q "$root/proc" 2>/dev/null && umount "$root/proc"
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
# rauc installs system bundles into the other root slot: its command line asks its D-Bus activated service
# (rauc-service, dbus), which reads a bundle's manifest with unsquashfs (squashfs-tools).
packages=systemd,systemd-sysv,udev,kmod,$kernel,systemd-boot-efi,python3,python3-venv,mosquitto,iproute2,rauc,rauc-service,dbus,squashfs-tools
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
in_root python3 -m venv --without-pip /opt/fieldgate/b  # gets slot a's pip below, file for file
in_root /opt/fieldgate/a/bin/pip install -q --no-cache-dir --disable-pip-version-check --no-index \
    --find-links /tmp/fieldgate-wheels "${dists[@]//_/-}"
ln -sfn a "$root/opt/fieldgate/current"
in_root /opt/fieldgate/current/bin/python -c 'import gateway._native' \
    || fail "the native module does not load on the image's python3"
in_root /opt/fieldgate/current/bin/fieldgate check /etc/fieldgate >/dev/null \
    || fail "fieldgate check /etc/fieldgate fails in the image"
rm -rf "$root/tmp/fieldgate-wheels" "$root/tmp/fieldgate-src"

# --- the read-only system ---------------------------------------------------------------------------------------
step "system: a read-only root with the data partition mounted by the initramfs"
kernel_version=$(basename "$(find "$root/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -1)")
[ -n "$kernel_version" ] || fail "no kernel modules in the root ($kernel)"
install -d -m 755 "$root/data"
esp_uuid=$(cat /proc/sys/kernel/random/uuid)
root_a_uuid=$(cat /proc/sys/kernel/random/uuid)
root_b_uuid=$(cat /proc/sys/kernel/random/uuid)
data_uuid=$(cat /proc/sys/kernel/random/uuid)
cat > "$root/etc/fstab" <<EOF
# The root is a read-only squashfs slot (root-a or root-b). The initramfs mounts the data partition at /data with
# the writable layers over /etc, /var and /opt/fieldgate and /var/lib/fieldgate on it (see
# /etc/initramfs-tools/scripts/local-bottom/fieldgate-data).
PARTUUID=$esp_uuid /boot/efi vfat umask=0077,noatime,nofail 0 0
tmpfs /tmp tmpfs mode=1777,nosuid,nodev,size=25% 0 0
EOF
# System updates: RAUC writes a signed bundle into the other root slot; systemd-boot counts the new slot's tries.
install -d -m 755 "$root/etc/rauc"
install -m 644 "$signing_dir/ca.cert.pem" "$root/etc/rauc/keyring.pem"
install -m 755 "$here/rauc/bootloader" "$root/usr/lib/fieldgate/rauc-bootloader"
cat > "$root/etc/rauc/system.conf" <<EOF
# The fieldgate appliance's A/B system slots (see gateway/ops/osupdate.py).
[system]
compatible=$compatible
bootloader=custom
mountprefix=/run/rauc
statusfile=/data/rauc.status

[keyring]
path=/etc/rauc/keyring.pem

[handlers]
bootloader-custom-backend=/usr/lib/fieldgate/rauc-bootloader

[slot.rootfs.0]
device=/dev/disk/by-partuuid/$root_a_uuid
type=raw
bootname=a

[slot.rootfs.1]
device=/dev/disk/by-partuuid/$root_b_uuid
type=raw
bootname=b
EOF
printf '%s\n' "$system_version" > "$root/usr/lib/fieldgate/system-version"
install -m 644 "$here/fieldgate-os-update.path" "$here/fieldgate-os-update.service" "$here/fieldgate-os-health.service" \
    "$root/etc/systemd/system/"
in_root systemctl enable fieldgate-os-update.path fieldgate-os-health.service >/dev/null 2>&1 \
    || fail "systemctl enable in the image's root failed"
install -d "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nSystemMaxUse=32M\nRuntimeMaxUse=16M\n' > "$root/etc/systemd/journald.conf.d/fieldgate.conf"
install -m 644 "$here/fieldgate-boot-report.service" "$root/etc/systemd/system/"
in_root systemctl enable fieldgate-boot-report.service >/dev/null 2>&1 || fail "systemctl enable in the image's root failed"
# Nothing waits for the network to be "online": the gateway listens on every address from the start, and the
# first-boot provisioning waits for it only to join a registry. No periodic disk jobs on an appliance, no console
# logins (no account has a password), no pstore, and modules load when used rather than at every boot.
in_root systemctl mask systemd-networkd-wait-online.service e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    apt-daily.timer apt-daily-upgrade.timer getty-static.service getty@tty1.service serial-getty@ttyS0.service \
    serial-getty@ttyAMA0.service systemd-pstore.service modprobe@efi_pstore.service modprobe@dm_mod.service \
    modprobe@loop.service modprobe@fuse.service >/dev/null 2>&1 || fail "systemctl mask in the image's root failed"

step "system: kernel modules an edge box does not use, removed"
kernel_dir=$root/usr/lib/modules/$kernel_version/kernel
# Kept: storage (SATA, NVMe, virtio, USB, MMC), wired and USB network adapters, CAN, USB serial adapters, i2c, spi,
# gpio, iio, hwmon, watchdogs, input and HID, netfilter and bridges for containers, device mapper; file systems
# ext4, vfat, exfat, squashfs, overlay, fuse.
for path in sound drivers/gpu drivers/media drivers/infiniband drivers/staging drivers/video drivers/isdn \
        drivers/bluetooth drivers/nfc drivers/atm drivers/target drivers/firewire drivers/thunderbolt \
        drivers/pcmcia drivers/parport drivers/xen drivers/vhost drivers/vfio drivers/comedi drivers/scsi/*/ \
        drivers/net/wireless drivers/net/hamradio drivers/net/fddi drivers/net/arcnet drivers/net/ieee802154 \
        drivers/net/wan drivers/net/plip drivers/net/ethernet/mellanox drivers/net/ethernet/chelsio \
        drivers/net/ethernet/qlogic drivers/net/ethernet/cavium drivers/net/ethernet/emulex \
        drivers/net/ethernet/huawei drivers/net/ethernet/netronome drivers/net/ethernet/pensando \
        drivers/net/ethernet/sfc drivers/net/ethernet/intel/ice drivers/net/ethernet/intel/i40e \
        drivers/net/ethernet/intel/iavf drivers/net/ethernet/intel/idpf drivers/net/ethernet/intel/fm10k \
        drivers/input/joystick drivers/input/tablet drivers/input/touchscreen drivers/usb/gadget drivers/iio \
        drivers/mtd drivers/message drivers/soundwire drivers/accessibility drivers/hid/intel-ish-hid \
        drivers/hid/amd-sfh-hid drivers/hid/surface-hid drivers/net/xen-netback drivers/net/fjes \
        drivers/net/thunderbolt arch/x86/kvm virt drivers/net/ethernet/broadcom/bnx2x drivers/net/ethernet/broadcom/bnxt \
        drivers/net/ethernet/marvell/octeontx2 drivers/net/ethernet/marvell/prestera drivers/net/ethernet/intel/ixgbevf \
        net/sunrpc net/ceph net/rds net/tipc net/smc net/9p net/rxrpc net/dccp net/bluetooth net/wireless \
        net/mac80211 net/nfc net/6lowpan net/ieee802154 net/mac802154 net/atm net/ax25 net/netrom net/rose \
        net/x25 net/lapb net/phonet net/caif net/batman-adv net/openvswitch; do
    rm -rf "$kernel_dir"/$path
done
# Server and data-centre storage (old SCSI host adapters, hardware RAID, tape, iSCSI/FC transports, caching and
# thin-provisioning device-mapper targets, software RAID 4-6) and laptop vendors' platform drivers.
for path in drivers/scsi/3w-* drivers/scsi/BusLogic.ko drivers/scsi/a100u2w.ko drivers/scsi/advansys.ko \
        drivers/scsi/am53c974.ko drivers/scsi/atp870u.ko drivers/scsi/dc395x.ko drivers/scsi/dmx3191d.ko \
        drivers/scsi/esp_scsi.ko drivers/scsi/hpsa.ko drivers/scsi/hptiop.ko drivers/scsi/hv_storvsc.ko \
        drivers/scsi/initio.ko drivers/scsi/ipr.ko drivers/scsi/ips.ko drivers/scsi/megaraid.ko drivers/scsi/mvumi.ko \
        drivers/scsi/myrb.ko drivers/scsi/myrs.ko drivers/scsi/pmcraid.ko drivers/scsi/qla1280.ko \
        drivers/scsi/qlogicfas408.ko drivers/scsi/scsi_debug.ko drivers/scsi/stex.ko drivers/scsi/vmw_pvscsi.ko \
        drivers/scsi/wd719x.ko drivers/scsi/xen-scsifront.ko drivers/scsi/ch.ko drivers/scsi/st.ko \
        drivers/scsi/*iscsi* drivers/scsi/scsi_transport_fc.ko drivers/scsi/scsi_transport_srp.ko \
        drivers/scsi/scsi_transport_spi.ko drivers/md/bcache drivers/md/raid456.ko drivers/md/raid10.ko \
        drivers/md/dm-thin-pool.ko drivers/md/dm-cache*.ko drivers/md/dm-zoned.ko drivers/md/dm-era.ko \
        drivers/md/dm-clone.ko drivers/md/dm-writecache.ko drivers/md/persistent-data drivers/md/dm-vdo \
        drivers/platform/x86/dell drivers/platform/x86/hp drivers/platform/x86/thinkpad_acpi.ko \
        drivers/platform/x86/sony-laptop.ko drivers/platform/x86/toshiba* drivers/platform/x86/asus* \
        drivers/platform/x86/ideapad-laptop.ko drivers/platform/x86/acer* drivers/platform/x86/fujitsu* \
        drivers/platform/x86/samsung* drivers/platform/x86/msi* drivers/platform/x86/lg-laptop.ko \
        drivers/platform/x86/compal-laptop.ko drivers/platform/x86/panasonic-laptop.ko \
        drivers/platform/x86/eeepc* drivers/platform/x86/surface* drivers/platform/surface \
        drivers/platform/chrome; do
    rm -rf "$kernel_dir"/$path
done
for nic in "$kernel_dir"/drivers/net/ethernet/*/; do  # the NICs of industrial PCs and SoCs; no data-centre cards
    case $(basename "$nic") in
        intel|realtek|stmicro|broadcom|microchip|amd|marvell|freescale|ti|cadence|rockchip) ;;
        *) rm -rf "$nic" ;;
    esac
done
for fs in "$kernel_dir"/fs/*/; do
    case $(basename "$fs") in
        ext4|jbd2|fat|exfat|squashfs|overlayfs|nls|fuse|autofs|quota|efivarfs) ;;  # efivarfs: boot entries, counting
        *) rm -rf "$fs" ;;
    esac
done
in_root depmod "$kernel_version"

step "system: initramfs (squashfs root, data partition, overlays)"
sed -i 's/^MODULES=.*/MODULES=list/; s/^#\?COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
grep -v '^#' "$here/initramfs/modules" >> "$root/etc/initramfs-tools/modules"
[ "$arch" = arm64 ] && echo virtio_mmio >> "$root/etc/initramfs-tools/modules"
install -D -m 755 "$here/initramfs/fieldgate-data" "$root/etc/initramfs-tools/scripts/local-bottom/fieldgate-data"
install -D -m 755 "$here/initramfs/fieldgate-hook" "$root/etc/initramfs-tools/hooks/fieldgate"
mount -t proc proc "$root/proc"
in_root update-initramfs -u -k "$kernel_version" > "$work/initramfs.log" 2>&1 \
    || { umount "$root/proc"; tail -20 "$work/initramfs.log" >&2; fail "update-initramfs failed (log above)"; }
umount "$root/proc"
# The image's root has no zstd: mkinitramfs fell back to gzip. zstd is smaller and decompresses faster at boot.
if grep -q '^CONFIG_RD_ZSTD=y' "$root/boot/config-$kernel_version" && gzip -t "$root/boot/initrd.img-$kernel_version" 2>/dev/null; then
    gzip -dc "$root/boot/initrd.img-$kernel_version" | zstd -q -19 -T0 > "$work/initrd.zst"
    mv "$work/initrd.zst" "$root/boot/initrd.img-$kernel_version"
fi

step "system: the rest the appliance does not use, removed; python byte code compiled"
# Build-time and package-management parts: the root is never changed by apt (a system update replaces the slot).
in_root dpkg --purge --force-depends --force-remove-essential apt libapt-pkg6.0 gpgv debian-archive-keyring \
    perl-base python3-pip-whl python3-setuptools-whl \
    >/dev/null 2>&1 || fail "dpkg --purge in the image's root failed"
# Caches the read-only /usr never needs rebuilt at boot (hwdb.bin is built, ld.so.cache and the catalog are current).
in_root systemctl mask systemd-hwdb-update.service ldconfig.service systemd-journal-catalog-update.service \
    systemd-update-done.service >/dev/null 2>&1 || fail "systemctl mask in the image's root failed"
find "$root/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright ! -path '*/doc/fieldgate/*' -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian "$root"/usr/share/bug \
    "$root"/usr/share/bash-completion "$root"/usr/share/zsh "$root"/usr/share/python-wheels \
    "$root"/var/cache/apt "$root"/var/lib/apt "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/var/cache/ldconfig/aux-cache "$root"/usr/lib/udev/hwdb.d "$root"/usr/lib/udev/hwdb.bin
# glibc's character set converters: nothing on the appliance calls iconv beyond UTF-8, UTF-16/32 and Latin-1.
find "$root"/usr/lib/*-linux-gnu/gconv \
    -name '*.so' ! -name 'UTF-*' ! -name 'UNICODE.so' ! -name 'ISO8859-1.so' -delete 2>/dev/null || true
stdlib=$root/usr/lib/python$image_python
rm -rf "$stdlib"/test "$stdlib"/idlelib "$stdlib"/tkinter "$stdlib"/turtledemo "$stdlib"/turtle.py \
    "$stdlib"/lib2to3 "$stdlib"/ensurepip "$stdlib"/pydoc_data "$stdlib"/__pycache__/turtle.*
find "$root/var/log" -type f -delete
# faker (litestar's optional OpenAPI examples, never generated here) keeps its default locale only; asyncpg is the
# registry's PostgreSQL driver, and a node never serves the registry.
rm -rf "$root/opt/fieldgate/a/lib/python$image_python/site-packages"/asyncpg \
    "$root/opt/fieldgate/a/lib/python$image_python/site-packages"/asyncpg-*.dist-info
find "$root/opt/fieldgate/a/lib/python$image_python/site-packages/faker/providers" -mindepth 2 -maxdepth 2 -type d \
    -regextype posix-extended -regex '.*/[a-z]{2,3}(_[A-Z][A-Za-z]+)?' ! -name en ! -name en_US -exec rm -rf {} + \
    2>/dev/null || true
# The root is read-only: whatever is imported must have its byte code in the image. The standard library and the
# third-party packages keep only their byte code (as Buildroot's pyc-only Python does: tracebacks name the file and
# line); fieldgate and its plugins keep their sources too.
in_root python3 - "/usr/lib/python$image_python" "/opt/fieldgate/a/lib/python$image_python/site-packages" <<'EOF' \
    || fail "compiling the python byte code in the image's root failed"
import os, py_compile, re, shutil, sys
from pathlib import Path

def ours(path: Path) -> bool:
    return any(part == "gateway" or part.startswith("fieldgate") for part in path.parts)

for top in map(Path, sys.argv[1:]):
    for directory, dirs, files in os.walk(top):
        here = Path(directory)
        if here.name == "__pycache__":
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            source = here / name
            relative = source.relative_to(top)
            if ours(relative):
                py_compile.compile(str(source), doraise=False, quiet=2)
                continue
            try:
                py_compile.compile(str(source), cfile=str(source) + "c", doraise=True, quiet=2)
            except (py_compile.PyCompileError, OSError):
                continue  # not python 3 (a template or test data) or a dangling link: left as it is
            source.unlink()
    for cache in top.rglob("__pycache__"):
        if not ours(cache.relative_to(top)):
            shutil.rmtree(cache)
EOF
# Slot b starts with slot a's pip (what `fieldgate upgrade` installs with), the same files, which the squashfs
# stores once.
site_a=$root/opt/fieldgate/a/lib/python$image_python/site-packages
site_b=$root/opt/fieldgate/b/lib/python$image_python/site-packages
for item in "$site_a"/pip "$site_a"/pip-*.dist-info "$site_a"/setuptools "$site_a"/setuptools-*.dist-info \
        "$site_a"/pkg_resources "$site_a"/_distutils_hack "$site_a"/distutils-precedence.pth; do
    [ -e "$item" ] && cp -a "$item" "$site_b/"
done
in_root /opt/fieldgate/b/bin/python -m pip --version >/dev/null || fail "slot b has no working pip"
# The files a gateway start reads, for fieldgate-prefetch.service: what the gateway, its plugins and its web app
# import, in path order (the squashfs's order).
in_root /opt/fieldgate/current/bin/python - > "$root/usr/lib/fieldgate/prefetch.list" <<'EOF' \
    || fail "listing the gateway's modules in the image's root failed"
import importlib, os, sys
from gateway.plugins import get_plugin_manager
get_plugin_manager()
for name in ("gateway.cli", "gateway.runtime", "gateway.web", "gateway.store", "uvicorn", "aiosqlite", "aiomqtt"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
files = set()
for module in list(sys.modules.values()):
    for attribute in ("__cached__", "__file__"):
        path = getattr(module, attribute, None)
        if isinstance(path, str) and not path.endswith(".py") and os.path.isfile(path):
            files.add(os.path.realpath(path))
print("\n".join(sorted(files)))
EOF
install -m 644 "$here/fieldgate-prefetch.service" "$root/etc/systemd/system/"
in_root systemctl enable fieldgate-prefetch.service >/dev/null 2>&1 || fail "systemctl enable in the image's root failed"
in_root /opt/fieldgate/current/bin/fieldgate check /etc/fieldgate >/dev/null \
    || fail "fieldgate check /etc/fieldgate fails in the image once trimmed"

# --- partitions ------------------------------------------------------------------------------------------------
step "disk: squashfs root slot, partitions, systemd-boot"
kernel_image=$(find "$root/boot" -maxdepth 1 -name "vmlinu*-$kernel_version" | head -1)
initrd_image=$root/boot/initrd.img-$kernel_version
[ -f "$kernel_image" ] && [ -f "$initrd_image" ] || fail "no kernel or initrd in the root ($kernel)"
loader=$root/usr/lib/systemd/boot/efi/systemd-boot$efi_arch.efi
[ -f "$loader" ] || fail "no systemd-boot loader in the root ($loader)"
mkdir -p "$work/boot"
mv "$kernel_image" "$work/boot/vmlinuz"
mv "$initrd_image" "$work/boot/initrd.img"
cp "$loader" "$work/boot/loader.efi"
rm -rf "$root"/boot/* "$root"/tmp/* "$root"/var/tmp/*  # each slot's kernel and initrd live on the ESP
install -d -m 755 "$root/boot/efi"  # the mount point: the read-only root cannot have it made at boot
used_mib=$(( $(du -sxm "$root" | cut -f1) ))
mksquashfs "$root" "$work/root.sqfs" -comp zstd -Xcompression-level 19 -b 1M -noappend -no-progress -quiet \
    > "$work/mksquashfs.log" 2>&1 || { tail -5 "$work/mksquashfs.log" >&2; fail "mksquashfs failed"; }

mib=$((1024 * 1024))
esp_mib=128
data_mib=512  # the store, the writable layers and room for a downloaded system bundle
squashfs_mib=$(( ($(stat -c %s "$work/root.sqfs") + mib - 1) / mib ))
slot_mib=$(( (squashfs_mib * 2 + 63) / 64 * 64 ))  # room for a next version twice this size
[ "$slot_mib" -ge 256 ] || slot_mib=256
disk_mib=$(( 1 + esp_mib + 2 * slot_mib + data_mib + 1 ))

console=ttyS0
[ "$arch" = arm64 ] && console=ttyAMA0
# One boot entry per system slot; slot b has no kernel until a system update writes slot b and its files here.
# The entry names are ready for systemd-boot's boot counting (fieldgate-b+3.conf).
mkdir -p "$work/esp/loader/entries"
# No default: systemd-boot boots the first entry by sort-key that has tries left (rauc-bootloader sets the keys).
printf 'timeout 0\neditor no\n' > "$work/esp/loader/loader.conf"
for slot in a b; do
    if [ "$slot" = a ]; then slot_uuid=$root_a_uuid; title="fieldgate $version (slot a)"; key=fieldgate-1
    else slot_uuid=$root_b_uuid; title="fieldgate (slot b)"; key=fieldgate-2; fi
    cat > "$work/esp/loader/entries/fieldgate-$slot.conf" <<EOF
title $title
linux /$slot/vmlinuz
initrd /$slot/initrd.img
options root=PARTUUID=$slot_uuid ro rootfstype=squashfs fieldgate.data=PARTUUID=$data_uuid rauc.slot=$slot panic=10 console=tty0 console=$console,115200 quiet loglevel=3
sort-key $key
EOF
done
esp=$work/esp.img
mkfs.vfat -C -F 32 -n FIELDGATE "$esp" $(( esp_mib * 1024 )) >/dev/null
upper_efi_arch=$(echo "$efi_arch" | tr a-z A-Z)
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/a ::/b
mcopy -i "$esp" "$work/boot/loader.efi" "::/EFI/BOOT/BOOT$upper_efi_arch.EFI"
mcopy -i "$esp" "$work/boot/loader.efi" "::/EFI/systemd/systemd-boot$efi_arch.efi"
mcopy -i "$esp" "$work/esp/loader/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/esp/loader/entries/fieldgate-a.conf" "$work/esp/loader/entries/fieldgate-b.conf" \
    ::/loader/entries/
mcopy -i "$esp" "$work/boot/vmlinuz" ::/a/vmlinuz
mcopy -i "$esp" "$work/boot/initrd.img" ::/a/initrd.img
mcopy -i "$esp" "$here/provision.example.yaml" ::/fieldgate-provision.example.yaml
[ -n "$provision" ] && mcopy -i "$esp" "$provision" ::/fieldgate-provision.yaml

# The data partition: the gateway's data directory and the writable layers' directories.
install -d -m 755 "$work/data" "$work/data/overlay"
for layer in etc var opt; do install -d -m 755 "$work/data/overlay/$layer/upper" "$work/data/overlay/$layer/work"; done
install -d -m 750 -o "$uid" -g "$gid" "$work/data/fieldgate"
mkfs.ext4 -q -F -L fieldgate-data -d "$work/data" "$work/data.img" "${data_mib}M" >/dev/null

disk=$work/$name.img
truncate -s "${disk_mib}M" "$disk"
esp_start=$(( mib / 512 ))
root_a_start=$(( esp_start + esp_mib * mib / 512 ))
root_b_start=$(( root_a_start + slot_mib * mib / 512 ))
data_start=$(( root_b_start + slot_mib * mib / 512 ))
sfdisk -q "$disk" <<EOF
label: gpt
start=$esp_start, size=$(( esp_mib * mib / 512 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_uuid, name=esp
start=$root_a_start, size=$(( slot_mib * mib / 512 )), type=$root_type, uuid=$root_a_uuid, name=root-a
start=$root_b_start, size=$(( slot_mib * mib / 512 )), type=$root_type, uuid=$root_b_uuid, name=root-b
start=$data_start, size=$(( data_mib * mib / 512 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$data_uuid, name=data
EOF
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.sqfs" of="$disk" bs=1M seek=$(( 1 + esp_mib )) conv=notrunc,sparse status=none
dd if="$work/data.img" of="$disk" bs=1M seek=$(( 1 + esp_mib + 2 * slot_mib )) conv=notrunc,sparse status=none

# --- the system bundle -----------------------------------------------------------------------------------------
step "bundle: the system as a signed RAUC bundle (version $system_version)"
bundle_dir=$work/bundle
mkdir -p "$bundle_dir"
ln "$work/root.sqfs" "$bundle_dir/root.squashfs"
cp "$work/boot/vmlinuz" "$work/boot/initrd.img" "$bundle_dir/"
install -m 755 "$here/rauc/hook" "$bundle_dir/hook"
cat > "$bundle_dir/manifest.raucm" <<EOF
[update]
compatible=$compatible
version=$system_version
description=fieldgate $version appliance system ($arch)
build=$(date -u +%Y%m%d%H%M%S)

[hooks]
filename=hook

[image.rootfs]
filename=root.squashfs
hooks=post-install
EOF
bundle=$out/fieldgate-os-$system_version-$arch.raucb
rm -f "$bundle"
rauc bundle --cert "$signing_dir/signing.cert.pem" --key "$signing_dir/signing.key.pem" \
    --keyring "$signing_dir/ca.cert.pem" "$bundle_dir" "$bundle" > "$work/bundle.log" 2>&1 \
    || { tail -5 "$work/bundle.log" >&2; fail "rauc bundle failed (log above)"; }
# As the image will: its system.conf read and the bundle's signature checked against its keyring.
rauc --conf "$root/etc/rauc/system.conf" --keyring "$root/etc/rauc/keyring.pem" info "$bundle" > "$work/info.log" 2>&1 \
    || { tail -5 "$work/info.log" >&2; fail "the image's RAUC refuses its own bundle (log above)"; }
(cd "$out" && sha256sum "$(basename "$bundle")" > "$(basename "$bundle").sha256")

# --- output ----------------------------------------------------------------------------------------------------
step "output: zstd and sha256"
zstd -q -T0 -3 -f "$disk" -o "$out/$name.img.zst"
(cd "$out" && sha256sum "$name.img.zst" > "$name.img.zst.sha256")
if [ "$keep_raw" = 1 ]; then mv "$disk" "$out/$name.img"; fi
bytes=$(stat -c %s "$out/$name.img.zst")
size=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
summary="${size} MiB compressed ($bytes bytes), ${disk_mib} MiB disk, root slot ${squashfs_mib} MiB squashfs of ${used_mib} MiB in slots of ${slot_mib} MiB"
if [ "$max_compressed_mib" -gt 0 ] && [ "$bytes" -gt $(( max_compressed_mib * mib )) ]; then
    echo "build.sh: $out/$name.img.zst is ${size} MiB compressed, over the budget of $max_compressed_mib MiB (--max-compressed-mib); $summary" >&2
    exit 1
fi
step "done: $out/$name.img.zst ($summary) and $bundle ($(( $(stat -c %s "$bundle") / mib )) MiB)"
