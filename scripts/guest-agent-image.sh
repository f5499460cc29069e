#!/usr/bin/env bash
# A tiny guest WITH a QEMU guest agent, for the real-hypervisor tier's
# freeze/thaw tests (application-consistent backups). Idempotent; run it after
# scripts/hypervisor-setup.sh, whose kernel package it reuses (read only: the
# shared images in /var/cache/vmbot-guest are never rebuilt or touched here).
#
#  1. installs qemu-guest-agent (Debian's qemu-ga) if it is missing;
#  2. builds, cached in $VMBOT_GUEST_AGENT_CACHE (default
#     /var/cache/vmbot-guest-agent), initrd-agent.img: busybox, qemu-ga with
#     the libraries ldd names, and the virtio_pci, virtio_blk and
#     virtio_console modules of the same cloud kernel. Rebuilt only when the
#     kernel package, busybox, qemu-guest-agent or this script change;
#  3. prints KEY=VALUE lines on stdout (everything else goes to stderr):
#     VMBOT_GUEST_INITRD_AGENT. Boot it with VMBOT_GUEST_KERNEL.
#
# Guest contract (for test authors):
#  - same <os> as the other tiny guests (console=ttyS0), no NIC needed;
#  - the first disk, vda, is the data disk: mounted on /data (ext4 driver;
#    a blank disk is formatted by busybox mke2fs first), so the agent has a
#    filesystem to freeze (the initramfs root cannot be frozen);
#  - <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>
#    </channel>: qemu-ga listens on that port;
#  - every freeze and thaw runs the fsfreeze hook, which prints
#    "VMBOT-GUEST-FSFREEZE freeze" / "VMBOT-GUEST-FSFREEZE thaw" on the console;
#  - the serial console shows "VMBOT-GUEST-READY variant=agent data=..
#    agent=.." once the agent has been started.
set -euo pipefail

SRC=${VMBOT_GUEST_CACHE:-/var/cache/vmbot-guest}
CACHE=${VMBOT_GUEST_AGENT_CACHE:-/var/cache/vmbot-guest-agent}
MODULES="virtio_pci virtio_blk virtio_console"
OUT="$CACHE/initrd-agent.img"
SELF=$(readlink -f "${BASH_SOURCE[0]}")
LOG_DIR=/var/log/vmbot
mkdir -p "$LOG_DIR" "$CACHE"
export DEBIAN_FRONTEND=noninteractive

log() { echo "guest-agent-image: $*" >&2; }
die() { echo "guest-agent-image: ERROR: $*" >&2; exit 1; }

WORK=""
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)" = "ii " ]; }
if ! installed qemu-guest-agent; then
    log "installing qemu-guest-agent"
    if ! apt-get install -y --no-install-recommends qemu-guest-agent >>"$LOG_DIR/apt.log" 2>&1; then
        apt-get update >>"$LOG_DIR/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends qemu-guest-agent >>"$LOG_DIR/apt.log" 2>&1 ||
            { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get install qemu-guest-agent failed"; }
    fi
fi
installed busybox-static || die "busybox-static is missing: run scripts/hypervisor-setup.sh first"

kv=$(cat "$SRC/kernel-version" 2>/dev/null || true)
[ -n "$kv" ] || die "no $SRC/kernel-version: run scripts/hypervisor-setup.sh first"
kernel_deb=$(ls -1 "$SRC"/debs/linux-image-"$kv"_*.deb 2>/dev/null | tail -n 1 || true)
[ -n "$kernel_deb" ] || die "no kernel package for $kv in $SRC/debs: run scripts/hypervisor-setup.sh first"

inputs_hash=$( { basename "$kernel_deb"; dpkg-query -W -f='${Version}\n' busybox-static qemu-guest-agent;
    sha256sum <"$SELF"; } | sha256sum | cut -d' ' -f1)

write_init() {  # root
    cat >"$1/init" <<'EOF'
#!/bin/sh
# vmbot test guest with a QEMU guest agent: see scripts/guest-agent-image.sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /var/run /var/log /var/lib /tmp /data
mount -t devpts devpts /dev/pts
hostname vmbot-guest-agent
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" 2>/dev/null || echo "vmbot-guest: insmod $m failed" >/dev/console
done </etc/vmbot-modules

wait_for() {  # path
    i=0
    while [ ! -e "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
}
data=none
wait_for /dev/vda
if [ -b /dev/vda ]; then
    if ! mount -t ext4 /dev/vda /data 2>/dev/null; then
        mke2fs -q /dev/vda >/dev/null 2>&1 && mount -t ext4 /dev/vda /data
    fi
    grep -q " /data " /proc/mounts && data=/dev/vda && echo "written by the vmbot test guest" >/data/hello && sync
fi

agent=none
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && agent=/dev/${p##*/}
done
if [ "$agent" != none ]; then
    wait_for "$agent"
    qemu-ga -m virtio-serial -p "$agent" -F/etc/qemu/fsfreeze-hook -l /var/log/qemu-ga.log \
        -f /run/qemu-ga.pid -t /run &
fi

msg="VMBOT-GUEST-READY variant=agent data=$data agent=$agent kernel=$(uname -r)"
echo "$msg" >/dev/console
while :; do sleep 3600; done
EOF
    chmod 755 "$1/init"
    mkdir -p "$1/etc/qemu"
    cat >"$1/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
echo "VMBOT-GUEST-FSFREEZE $1" >/dev/console
exit 0
EOF
    chmod 755 "$1/etc/qemu/fsfreeze-hook"
}

build() {
    local kroot moddir root order m rel deps dep lib
    WORK=$(mktemp -d)
    kroot="$WORK/kernel"
    root="$WORK/root"
    dpkg-deb -x "$kernel_deb" "$kroot"
    moddir="$kroot/lib/modules/$kv"
    busybox depmod -b "$kroot" "$kv"
    order="$WORK/order"
    : >"$order"
    add() {  # relative module path, dependencies first
        grep -qxF "$1" "$order" && return 0
        deps=$(awk -v m="$1:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep")
        for dep in $deps; do add "$dep"; done
        echo "$1" >>"$order"
    }
    for m in $MODULES; do
        rel=$(awk -v m="$m" '{ f = $1; sub(":$", "", f); n = f; sub(".*/", "", n);
              sub("\\.ko(\\.[a-z]+)?$", "", n); gsub("-", "_", n); if (n == m) { print f; exit } }' \
            "$moddir/modules.dep")
        if [ -n "$rel" ]; then
            add "$rel"
        elif ! grep -qE "/$m\.ko\$" "$moddir/modules.builtin"; then
            die "module $m not found in $kv"
        fi
    done

    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,var/log,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    busybox --list-full | while read -r applet; do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    : >"$root/etc/vmbot-modules"
    while read -r rel; do
        case "$rel" in
            *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/$(basename "$rel" .xz)" ;;
            *.ko.zst) zstd -qdc "$moddir/$rel" >"$root/lib/modules/$(basename "$rel" .zst)" ;;
            *) cp "$moddir/$rel" "$root/lib/modules/" ;;
        esac
        basename "${rel%.xz}" | sed 's/\.zst$//' >>"$root/etc/vmbot-modules"
    done <"$order"

    cp /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
    for lib in $(ldd /usr/sbin/qemu-ga | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    [ -e "$root/lib64/ld-linux-x86-64.so.2" ] || die "ldd named no dynamic loader for qemu-ga"
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    write_init "$root"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet -R 0:0 | gzip -6n) >"$WORK/initrd-agent.img"
    chmod 644 "$WORK/initrd-agent.img"
    mv -f "$WORK/initrd-agent.img" "$OUT"
    log "built $OUT: kernel $kv, qemu-ga $(dpkg-query -W -f='${Version}' qemu-guest-agent), modules: $(tr '\n' ' ' <"$order")"
}

if [ "$(cat "$CACHE/inputs.sha256" 2>/dev/null || true)" = "$inputs_hash" ] && [ -s "$OUT" ]; then
    log "agent guest image up to date in $CACHE"
else
    rm -f "$CACHE/inputs.sha256"
    build
    echo "$inputs_hash" >"$CACHE/inputs.sha256"
fi

echo "VMBOT_GUEST_INITRD_AGENT=$OUT"
