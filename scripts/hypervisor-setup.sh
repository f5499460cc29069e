#!/usr/bin/env bash
# Prepare this machine for vmbot's real-hypervisor test tier (DESIGN.md,
# "Test tiers", item 3). Idempotent; safe to run again and again.
#
#  1. installs the Debian packages it needs (only those missing);
#  2. configures and starts virtlogd + libvirtd (qemu:///system) by hand;
#  3. builds, cached in $VMBOT_GUEST_CACHE (default /var/cache/vmbot-guest),
#     a tiny guest: the Debian cloud kernel (vmlinuz) and two busybox
#     initramfs images, initrd-acpi.img (busybox acpid powers off on the ACPI
#     power button) and initrd-noacpi.img (ignores it). Rebuilt only when the
#     kernel package, busybox or this script change;
#  4. defines and starts the dir storage pool "vmbot-pool" and the isolated
#     network "vmbot-isolated" (bridge vmbrtest0, 192.168.123.1/24, DHCP
#     .100-.199 when dnsmasq is there);
#  5. prints KEY=VALUE lines on stdout (everything else goes to stderr):
#     VMBOT_GUEST_KERNEL, VMBOT_GUEST_INITRD_ACPI, VMBOT_GUEST_INITRD_NOACPI,
#     VMBOT_POOL, VMBOT_POOL_DIR, VMBOT_NETWORK (empty if it could not be set
#     up), VMBOT_LIBVIRT_URI.
#
# Guest contract (for test authors):
#  - boot with <os><kernel>VMBOT_GUEST_KERNEL</kernel><initrd>..</initrd>
#    <cmdline>console=ttyS0</cmdline></os>, <features><acpi/></features>,
#    domain type='qemu' (TCG), machine 'pc', 128-256 MiB;
#  - the serial console shows a line starting with "VMBOT-GUEST-READY" once
#    the guest is up (also written to tty1, i.e. the VGA/VNC screen);
#  - NIC: model type='virtio' only (the cloud kernel has no e1000 driver);
#    eth0 gets 192.168.123.10/24 unless the kernel command line says
#    vmbot.ip=A.B.C.D/NN or vmbot.ip=dhcp (udhcpc; needs the network's DHCP);
#    the guest then pings the gateway (vmbot.gw=, default 192.168.123.1) once
#    so the host's ARP table (virsh domifaddr --source arp) knows it;
#  - acpi variant: the power button (virsh shutdown) prints
#    "VMBOT-GUEST-POWEROFF" and runs `poweroff -f`.
set -euo pipefail

CACHE=${VMBOT_GUEST_CACHE:-/var/cache/vmbot-guest}
URI=qemu:///system
POOL_NAME=vmbot-pool
POOL_DIR=${VMBOT_POOL_DIR:-/var/lib/vmbot/pool}
NET_NAME=vmbot-isolated
NET_BRIDGE=vmbrtest0
NET_ADDR=192.168.123.1
NET_MASK=255.255.255.0
KERNEL_META=linux-image-cloud-amd64
# Modules put into the initramfs (with their dependencies).
GUEST_MODULES="button evdev virtio_pci virtio_net virtio_blk"

SELF=$(readlink -f "${BASH_SOURCE[0]}")
LOG_DIR=/var/log/vmbot
mkdir -p "$LOG_DIR"

BUILD_TMP=""
trap '[ -z "$BUILD_TMP" ] || rm -rf "$BUILD_TMP"' EXIT

log() { echo "hypervisor-setup: $*" >&2; }
die() { echo "hypervisor-setup: ERROR: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- packages
PACKAGES=(
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils
    busybox-static cpio gzip
    iptables dnsmasq-base   # libvirt's network driver: firewall rules, DHCP
)

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update >>"$LOG_DIR/apt.log" 2>&1 || {
            tail -n 20 "$LOG_DIR/apt.log" >&2
            die "apt-get update failed (log: $LOG_DIR/apt.log)"
        }
        apt_updated=1
    fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)" != "ii " ]; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1; then
        apt_update
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 || {
            tail -n 20 "$LOG_DIR/apt.log" >&2
            die "apt-get install failed (log: $LOG_DIR/apt.log)"
        }
    fi
fi

# --------------------------------------------------------- users, qemu.conf
ensure_user() {  # name
    if ! getent passwd "$1" >/dev/null; then
        log "creating system user $1"
        useradd --system --user-group --no-create-home \
            --home-dir /var/lib/libvirt --shell /usr/sbin/nologin "$1"
    fi
}
ensure_user libvirt-qemu
ensure_user libvirt-dnsmasq   # dnsmasq is started as this user by libvirt

QEMU_CONF=/etc/libvirt/qemu.conf
mkdir -p /etc/libvirt
[ -e "$QEMU_CONF" ] || : >"$QEMU_CONF"
conf_changed=0
set_conf() {  # key value(verbatim)
    local key=$1 val=$2 line
    line="$key = $val"
    if grep -qxF "$line" "$QEMU_CONF" &&
        [ "$(grep -cE "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF")" = 1 ]; then
        return 0
    fi
    conf_changed=1
    if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF"; then
        # keep the first active setting (rewritten), drop any others
        awk -v key="$key" -v line="$line" '
            $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { if (!done) { print line; done = 1 }; next }
            { print }' "$QEMU_CONF" >"$QEMU_CONF.tmp"
        cat "$QEMU_CONF.tmp" >"$QEMU_CONF"
        rm -f "$QEMU_CONF.tmp"
    else
        echo "$line" >>"$QEMU_CONF"
    fi
}
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'

# ------------------------------------------------------------------ daemons
virsh_ok() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }

pid_alive() {  # PIDFILE NAME: after a reboot the file's pid may be another process's (or a thread's)
    local pid
    [ -r "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null || true)
    [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$2" ]
}

# Normally made by libvirt-daemon-system, which we don't install.
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/lib/libvirt/images \
    /var/lib/libvirt/dnsmasq /var/cache/libvirt/qemu /run/libvirt

if [ "$conf_changed" = 1 ] && pid_alive /run/libvirtd.pid libvirtd; then
    log "qemu.conf changed: restarting libvirtd (pid $(cat /run/libvirtd.pid))"
    kill "$(cat /run/libvirtd.pid)"
    for _ in $(seq 50); do pid_alive /run/libvirtd.pid libvirtd || break; sleep 0.2; done
fi

if ! pid_alive /run/virtlogd.pid virtlogd && ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd"
    virtlogd -d </dev/null >>"$LOG_DIR/virtlogd.log" 2>&1 ||
        log "warning: virtlogd -d failed (see $LOG_DIR/virtlogd.log)"
fi
if ! virsh_ok; then
    if ! pid_alive /run/libvirtd.pid libvirtd && ! pgrep -x libvirtd >/dev/null; then
        log "starting libvirtd"
        libvirtd -d </dev/null >>"$LOG_DIR/libvirtd.log" 2>&1 || {
            echo "hypervisor-setup: ERROR: libvirtd failed to start (libvirtd -d exited $?; see $LOG_DIR/libvirtd.log)" >&2
            exit 1
        }
    fi
    for _ in $(seq 40); do virsh_ok && break; sleep 0.5; done
    if ! virsh_ok; then
        echo "hypervisor-setup: ERROR: libvirtd is not answering on $URI after 20 s (see $LOG_DIR/libvirtd.log)" >&2
        exit 1
    fi
fi
log "libvirtd answers on $URI"

# ------------------------------------------------------------ guest images
mkdir -p "$CACHE/debs"

kernel_pkg=""
kernel_ver=""
resolve_kernel() {
    kernel_pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
        awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$kernel_pkg" ] || return 1
    kernel_ver=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null |
        awk '/^Version:/ { print $2; exit }')
    [ -n "$kernel_ver" ]
}
if ! resolve_kernel; then
    apt_update
    resolve_kernel || true
fi

kernel_deb=""
if [ -n "$kernel_pkg" ]; then
    kernel_deb="$CACHE/debs/${kernel_pkg}_${kernel_ver//:/%3a}_amd64.deb"
    if [ ! -s "$kernel_deb" ]; then
        log "downloading $kernel_pkg $kernel_ver"
        dl=$(mktemp -d)
        if ! (cd "$dl" && apt-get -o APT::Sandbox::User=root download "$kernel_pkg=$kernel_ver") \
            >>"$LOG_DIR/apt.log" 2>&1; then
            apt_update
            (cd "$dl" && apt-get -o APT::Sandbox::User=root download "$kernel_pkg=$kernel_ver") \
                >>"$LOG_DIR/apt.log" 2>&1 || { rm -rf "$dl"; kernel_deb=""; }
        fi
        if [ -n "$kernel_deb" ]; then
            mv "$dl"/*.deb "$kernel_deb"
            rm -rf "$dl"
            # keep only the current kernel .deb
            find "$CACHE/debs" -name '*.deb' ! -path "$kernel_deb" -delete
        fi
    fi
fi
if [ -z "$kernel_deb" ]; then
    # no package index / registry: fall back to a kernel already cached
    kernel_deb=$(ls -1 "$CACHE"/debs/linux-image-*.deb 2>/dev/null | tail -n 1 || true)
    [ -n "$kernel_deb" ] || die "cannot find or download the $KERNEL_META kernel package"
    log "warning: using cached kernel package $(basename "$kernel_deb")"
fi

busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)
inputs_hash=$( { basename "$kernel_deb"; echo "$busybox_ver"; sha256sum <"$SELF"; } |
    sha256sum | cut -d' ' -f1)

KERNEL_OUT="$CACHE/vmlinuz"
INITRD_ACPI="$CACHE/initrd-acpi.img"
INITRD_NOACPI="$CACHE/initrd-noacpi.img"

write_init() {  # root variant(acpi|noacpi)
    local root=$1 variant=$2
    cat >"$root/init" <<'EOF'
#!/bin/sh
# vmbot test guest (busybox initramfs): see scripts/hypervisor-setup.sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /var/run /var/log /tmp
mount -t devpts devpts /dev/pts
hostname vmbot-guest
VARIANT=$(cat /etc/vmbot-variant)

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" 2>/dev/null || echo "vmbot-guest: insmod $m failed" >/dev/console
done </etc/vmbot-modules

ip=192.168.123.10/24
gw=192.168.123.1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmbot.ip=*) ip=${arg#vmbot.ip=} ;;
        vmbot.gw=*) gw=${arg#vmbot.gw=} ;;
    esac
done

if [ "$VARIANT" = acpi ]; then
    i=0
    while [ ! -e /dev/input/event0 ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
    acpid -c /etc/acpi -l /var/log/acpid.log
fi

ip link set lo up
addr=none
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    if [ "$ip" = dhcp ]; then
        udhcpc -i eth0 -s /etc/udhcpc.script -t 5 -T 1 -b -S >/dev/null 2>&1
        addr=$(ip -4 -o addr show dev eth0 | awk '{ print $4; exit }')
    elif [ "$ip" != none ]; then
        ip addr add "$ip" dev eth0
        addr=$ip
    fi
    # one ping so that the host's ARP table learns this guest
    [ "$ip" != none ] && (ping -c 1 -W 2 "$gw" >/dev/null 2>&1 &)
fi

msg="VMBOT-GUEST-READY variant=$VARIANT ip=${addr:-none} kernel=$(uname -r)"
echo "$msg" >/dev/console
echo "$msg" >/dev/tty1 2>/dev/null
while :; do sleep 3600; done
EOF
    chmod 755 "$root/init"
    echo "$variant" >"$root/etc/vmbot-variant"

    cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;
esac
exit 0
EOF
    chmod 755 "$root/etc/udhcpc.script"

    if [ "$variant" = acpi ]; then
        # busybox acpid: power button -> "PWRF/00000080" -> run this file
        mkdir -p "$root/etc/acpi/PWRF"
        cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "VMBOT-GUEST-POWEROFF" >/dev/console
poweroff -f
EOF
        chmod 755 "$root/etc/acpi/PWRF/00000080"
    fi
}

build_guest() {
    local work kroot kv moddir order variant root deb_line
    work=$(mktemp -d)
    BUILD_TMP=$work
    kroot="$work/kernel"
    log "extracting $(basename "$kernel_deb")"
    dpkg-deb -x "$kernel_deb" "$kroot"
    kv=$(ls -1 "$kroot/lib/modules" | head -n 1)
    [ -n "$kv" ] || die "no /lib/modules in $(basename "$kernel_deb")"
    moddir="$kroot/lib/modules/$kv"
    busybox depmod -b "$kroot" "$kv"

    # modules in load order (dependencies first); skip ones built in
    order="$work/modules.order"
    : >"$order"
    declare -A seen=()
    add_module() {  # relative path (kernel/...ko)
        local rel=$1 dep deps
        [ -n "${seen[$rel]:-}" ] && return 0
        seen[$rel]=1
        deps=$(awk -v m="$rel:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep")
        for dep in $deps; do add_module "$dep"; done
        echo "$rel" >>"$order"
    }
    for m in $GUEST_MODULES; do
        deb_line=$(awk -v m="$m" '{ f = $1; sub(":$", "", f); n = f; sub(".*/", "", n);
                   sub("\\.ko(\\.[a-z]+)?$", "", n); gsub("-", "_", n);
                   if (n == m) { print f; exit } }' "$moddir/modules.dep")
        if [ -n "$deb_line" ]; then
            add_module "$deb_line"
        elif grep -qE "/$m\.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
            log "module $m is built into the kernel"
        else
            die "module $m not found in $kv"
        fi
    done

    for variant in acpi noacpi; do
        root="$work/root-$variant"
        mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,var/log,lib/modules}
        cp /bin/busybox "$root/bin/busybox"
        busybox --list-full | while read -r applet; do
            [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
        done
        : >"$root/etc/vmbot-modules"
        while read -r rel; do
            local dst="$root/lib/modules/${rel##*/}"
            case "$rel" in
                *.ko.xz) xz -dc "$moddir/$rel" >"${dst%.xz}"; dst=${dst%.xz} ;;
                *.ko.zst) zstd -qdc "$moddir/$rel" >"${dst%.zst}"; dst=${dst%.zst} ;;
                *.ko.gz) gzip -dc "$moddir/$rel" >"${dst%.gz}"; dst=${dst%.gz} ;;
                *) cp "$moddir/$rel" "$dst" ;;
            esac
            echo "${dst##*/}" >>"$root/etc/vmbot-modules"
        done <"$order"
        echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
        echo "root:x:0:" >"$root/etc/group"
        write_init "$root" "$variant"
        (cd "$root" && find . -print0 | LC_ALL=C sort -z |
            cpio --null -o -H newc --quiet -R 0:0 | gzip -9n) >"$work/initrd-$variant.img"
    done

    cp "$kroot/boot/vmlinuz-$kv" "$work/vmlinuz"
    chmod 644 "$work"/vmlinuz "$work"/initrd-*.img
    mv -f "$work/vmlinuz" "$KERNEL_OUT"
    mv -f "$work/initrd-acpi.img" "$INITRD_ACPI"
    mv -f "$work/initrd-noacpi.img" "$INITRD_NOACPI"
    echo "$kv" >"$CACHE/kernel-version"
    log "built guest: kernel $kv, modules: $(tr '\n' ' ' <"$order")"
    rm -rf "$work"
    BUILD_TMP=""
}

if [ "$(cat "$CACHE/inputs.sha256" 2>/dev/null || true)" = "$inputs_hash" ] &&
    [ -s "$KERNEL_OUT" ] && [ -s "$INITRD_ACPI" ] && [ -s "$INITRD_NOACPI" ]; then
    log "guest images up to date in $CACHE"
else
    rm -f "$CACHE/inputs.sha256"
    build_guest
    echo "$inputs_hash" >"$CACHE/inputs.sha256"
fi

# -------------------------------------------------------------- pool, network
v() { virsh -q -c "$URI" "$@"; }

if ! v pool-info "$POOL_NAME" >/dev/null 2>&1; then
    log "defining storage pool $POOL_NAME at $POOL_DIR"
    v pool-define-as "$POOL_NAME" dir --target "$POOL_DIR" >/dev/null
fi
mkdir -p "$POOL_DIR"
if [ "$(v pool-info "$POOL_NAME" | awk '/^State:/ { print $2 }')" != running ]; then
    v pool-build "$POOL_NAME" >/dev/null 2>&1 || true
    v pool-start "$POOL_NAME" >/dev/null || die "cannot start storage pool $POOL_NAME"
fi
v pool-autostart "$POOL_NAME" >/dev/null 2>&1 || true
v pool-refresh "$POOL_NAME" >/dev/null 2>&1 || true

network=""
net_warn() { log "WARNING: network $NET_NAME unavailable: $*; VMBOT_NETWORK is empty (pool only)"; }
setup_network() {
    local xml err dhcp
    if ! v net-info "$NET_NAME" >/dev/null 2>&1; then
        if command -v dnsmasq >/dev/null; then
            dhcp="<dhcp><range start='192.168.123.100' end='192.168.123.199'/></dhcp>"
        else
            dhcp=""
        fi
        xml=$(mktemp)
        cat >"$xml" <<EOF
<network>
  <name>$NET_NAME</name>
  <bridge name='$NET_BRIDGE' stp='off' delay='0'/>
  $( [ -n "$dhcp" ] || echo "<dns enable='no'/>" )
  <ip address='$NET_ADDR' netmask='$NET_MASK'>
    $dhcp
  </ip>
</network>
EOF
        log "defining network $NET_NAME (bridge $NET_BRIDGE, $NET_ADDR/24)"
        if ! err=$(v net-define "$xml" 2>&1); then
            rm -f "$xml"
            net_warn "net-define failed: $err"
            return 1
        fi
        rm -f "$xml"
    fi
    if [ "$(v net-info "$NET_NAME" | awk '/^Active:/ { print $2 }')" != yes ]; then
        if ! err=$(v net-start "$NET_NAME" 2>&1); then
            # A bridge left behind by a killed libvirtd blocks net-start.
            if ip link show "$NET_BRIDGE" >/dev/null 2>&1; then
                log "removing stale bridge $NET_BRIDGE and retrying"
                ip link del "$NET_BRIDGE" 2>/dev/null || true
                err=$(v net-start "$NET_NAME" 2>&1) || { net_warn "net-start failed: $err"; return 1; }
            else
                net_warn "net-start failed: $err"
                return 1
            fi
        fi
    fi
    v net-autostart "$NET_NAME" >/dev/null 2>&1 || true
    network=$NET_NAME
}
setup_network || true

echo "VMBOT_LIBVIRT_URI=$URI"
echo "VMBOT_GUEST_KERNEL=$KERNEL_OUT"
echo "VMBOT_GUEST_INITRD_ACPI=$INITRD_ACPI"
echo "VMBOT_GUEST_INITRD_NOACPI=$INITRD_NOACPI"
echo "VMBOT_POOL=$POOL_NAME"
echo "VMBOT_POOL_DIR=$POOL_DIR"
echo "VMBOT_NETWORK=$network"
