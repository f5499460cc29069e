#!/usr/bin/env bash
# Prepare this machine for vmbot's ssh tier: the deployment of README step 4,
# on loopback. Idempotent; safe to run again and again. Run it after
# scripts/hypervisor-setup.sh (it needs libvirtd running).
#
#  1. installs openssh-server (the Debian package; only the sshd binary is
#     used: the system sshd on port 22 is never configured, started or stopped);
#  2. Unix users: `vmbot` (the hypervisor side, member of group `libvirt`, may
#     log in only by key and only to run `virt-ssh-helper qemu:///system`) and
#     `vmbot-bot` (the bot side: unprivileged, owns its ssh key, cannot change
#     its pinned known_hosts);
#  3. libvirtd's read-write socket owned by group `libvirt`, mode 0770, no
#     polkit (`/etc/libvirt/libvirtd.conf`); libvirtd is restarted ONLY when
#     that file changed (other test runs share the daemon);
#  4. a second sshd of its own on port $VMBOT_SSH_PORT (default 2222) of
#     127.0.0.1, 127.0.0.2 and 127.0.0.3, with its own config, host key, pid
#     file and log under $RIG (/var/lib/vmbot-ssh-rig); key-only,
#     AllowUsers vmbot, no forwarding, no tty, ForceCommand virt-ssh-helper;
#  5. ~vmbot-bot/.ssh/config (StrictHostKeyChecking yes, ConnectTimeout 10,
#     ServerAliveInterval 15) and its pins in ~vmbot-bot/.ssh/known_hosts
#     (both root-owned, read-only to the bot): [127.0.0.1]:PORT with the sshd's real key; [127.0.0.2]:PORT with
#     another ("decoy") key, so the same sshd seen there is a CHANGED host key;
#     127.0.0.3 is not pinned at all (an UNKNOWN host key);
#  6. checks that vmbot-bot reaches libvirtd over qemu+ssh, then prints
#     KEY=VALUE lines on stdout (everything else goes to stderr):
#     VMBOT_SSH_URI, VMBOT_SSH_CHANGED_URI, VMBOT_SSH_UNKNOWN_URI,
#     VMBOT_SSH_BOT_USER, VMBOT_SSH_RIG, VMBOT_SSH_PORT, VMBOT_SSH_FINGERPRINT,
#     VMBOT_SSH_VMBOT (this checkout's `vmbot` that vmbot-bot can run: .venv's,
#     or .venv-bot built from /usr/bin/python3 when .venv's interpreter lives
#     where vmbot-bot cannot go, e.g. pyenv under /root).
#
# libvirt 9's `ssh` transport runs the OpenSSH client (`ssh ... -- HOST sh -c
# '...virt-ssh-helper...'`, falling back to `nc` only when the helper is
# missing); virt-ssh-helper ships in libvirt-daemon, so no netcat is needed.
set -euo pipefail
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)

RIG=/var/lib/vmbot-ssh-rig   # fixed: the users' home directories point into it
PORT=${VMBOT_SSH_PORT:-2222}
HV_USER=vmbot
BOT_USER=vmbot-bot
SOCK_GROUP=libvirt
LIBVIRTD_CONF=/etc/libvirt/libvirtd.conf
HELPER=/usr/bin/virt-ssh-helper
LOG_DIR=/var/log/vmbot
BOT_HOME="$RIG/bot"
KEY="$BOT_HOME/.ssh/id_ed25519"
PARAMS="keyfile=$KEY&no_tty=1"

log() { echo "ssh-rig-setup: $*" >&2; }
die() { echo "ssh-rig-setup: ERROR: $*" >&2; exit 1; }

exec 9>/run/vmbot-ssh-rig.lock   # two test runs at once set up one rig, one after the other
flock 9

export DEBIAN_FRONTEND=noninteractive
mkdir -p "$LOG_DIR"

# ---------------------------------------------------------------- packages
missing=()
for p in openssh-server openssh-client libvirt-daemon libvirt-clients; do
    if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)" != "ii " ]; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1; then
        apt-get update >>"$LOG_DIR/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 || {
            tail -n 20 "$LOG_DIR/apt.log" >&2
            die "apt-get install failed (log: $LOG_DIR/apt.log)"
        }
    fi
fi
[ -x "$HELPER" ] || die "$HELPER is missing (package libvirt-daemon)"

# ------------------------------------------------------------------- users
getent group "$SOCK_GROUP" >/dev/null || { log "creating group $SOCK_GROUP"; groupadd --system "$SOCK_GROUP"; }

install -d -m 0755 -o root -g root "$RIG" "$RIG/vmbot" "$RIG/authorized_keys" "$RIG/host" "$RIG/decoy"
if ! getent passwd "$HV_USER" >/dev/null; then
    log "creating user $HV_USER (hypervisor side)"
    # A shell is needed for sshd to run the forced command; sshd_config allows nothing else.
    useradd --system --user-group --groups "$SOCK_GROUP" --home-dir "$RIG/vmbot" --no-create-home \
        --shell /bin/sh "$HV_USER"
fi
id -nG "$HV_USER" | tr ' ' '\n' | grep -qx "$SOCK_GROUP" || usermod -a -G "$SOCK_GROUP" "$HV_USER"
# "*": no password, but not "locked" ("!"), which sshd without PAM refuses even for keys.
[ "$(getent shadow "$HV_USER" | cut -d: -f2)" = "*" ] || usermod -p '*' "$HV_USER"

if ! getent passwd "$BOT_USER" >/dev/null; then
    log "creating user $BOT_USER (bot side)"
    useradd --system --user-group --home-dir "$BOT_HOME" --no-create-home --shell /usr/sbin/nologin "$BOT_USER"
fi
[ "$(getent passwd "$BOT_USER" | cut -d: -f6)" = "$BOT_HOME" ] ||
    die "$BOT_USER exists with another home directory than $BOT_HOME: ssh would read other pins"
install -d -m 0700 -o "$BOT_USER" -g "$BOT_USER" "$BOT_HOME" "$RIG/runs"
# root-owned: the bot reads its pins but cannot add or replace a host key
install -d -m 0750 -o root -g "$BOT_USER" "$BOT_HOME/.ssh"
if [ ! -s "$KEY" ]; then
    log "generating $BOT_USER's key"
    rm -f "$KEY" "$KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C "$BOT_USER@vmbot-ssh-rig" -f "$KEY"
fi
chown "$BOT_USER:$BOT_USER" "$KEY" "$KEY.pub"
chmod 0600 "$KEY"
chmod 0644 "$KEY.pub"

# ------------------------------------------------------------- host keys
for dir in host decoy; do
    if [ ! -s "$RIG/$dir/ssh_host_ed25519_key" ]; then
        rm -f "$RIG/$dir/ssh_host_ed25519_key" "$RIG/$dir/ssh_host_ed25519_key.pub"
        ssh-keygen -q -t ed25519 -N '' -C "vmbot-ssh-rig-$dir" -f "$RIG/$dir/ssh_host_ed25519_key"
    fi
done
chmod 0600 "$RIG/host/ssh_host_ed25519_key" "$RIG/decoy/ssh_host_ed25519_key"

write_if_changed() {  # path mode owner content -> returns 0 if it changed
    local path=$1 mode=$2 owner=$3 content=$4
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        chmod "$mode" "$path"
        chown "$owner" "$path"
        return 1
    fi
    printf '%s\n' "$content" >"$path.tmp"
    chmod "$mode" "$path.tmp"
    chown "$owner" "$path.tmp"
    mv -f "$path.tmp" "$path"
    return 0
}

key_of() { cut -d' ' -f1,2 "$1"; }
write_if_changed "$RIG/authorized_keys/$HV_USER" 0644 root:root \
    "restrict $(key_of "$KEY.pub") $BOT_USER@vmbot-ssh-rig" || true
write_if_changed "$BOT_HOME/.ssh/known_hosts" 0644 root:root "$(printf '%s\n%s' \
    "[127.0.0.1]:$PORT $(key_of "$RIG/host/ssh_host_ed25519_key.pub")" \
    "[127.0.0.2]:$PORT $(key_of "$RIG/decoy/ssh_host_ed25519_key.pub")")" || true

# The bot user's OpenSSH client: refuse what is not pinned even without no_tty=1, and give
# up on a host that accepts TCP and never speaks (a hung ssh per probe would pile up).
write_if_changed "$BOT_HOME/.ssh/config" 0644 root:root "$(printf '%s\n' \
    "# vmbot ssh rig (scripts/ssh-rig-setup.sh): the bot user's ssh client settings" \
    "Host *" \
    "    StrictHostKeyChecking yes" \
    "    ConnectTimeout 10" \
    "    ServerAliveInterval 15" \
    "    ServerAliveCountMax 3")" || true

# ------------------------------------------------------- libvirtd socket
LIBVIRTD_WANT=(
    "unix_sock_group = \"$SOCK_GROUP\""
    'unix_sock_rw_perms = "0770"'
    'auth_unix_rw = "none"'
)
conf_changed=0
[ -e "$LIBVIRTD_CONF" ] || { mkdir -p /etc/libvirt; : >"$LIBVIRTD_CONF"; }
for line in "${LIBVIRTD_WANT[@]}"; do
    key=${line%% *}
    if grep -qxF "$line" "$LIBVIRTD_CONF" &&
        [ "$(grep -cE "^[[:space:]]*${key}[[:space:]]*=" "$LIBVIRTD_CONF")" = 1 ]; then
        continue
    fi
    conf_changed=1
    awk -v key="$key" '$0 !~ "^[[:space:]]*" key "[[:space:]]*=" { print }' "$LIBVIRTD_CONF" >"$LIBVIRTD_CONF.tmp"
    echo "$line" >>"$LIBVIRTD_CONF.tmp"
    cat "$LIBVIRTD_CONF.tmp" >"$LIBVIRTD_CONF"
    rm -f "$LIBVIRTD_CONF.tmp"
done

pid_alive() {  # PIDFILE NAME: after a reboot the file's pid may be another process's (or a thread's)
    [ -r "$1" ] && [ "$(ps -o comm= -p "$(cat "$1" 2>/dev/null)" 2>/dev/null)" = "$2" ]
}
virsh_ok() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

if [ "$conf_changed" = 1 ]; then
    if pid_alive /run/libvirtd.pid libvirtd; then
        old=$(cat /run/libvirtd.pid)
        log "libvirtd.conf changed: restarting libvirtd (pid $old) once"
        kill "$old"
        for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
        libvirtd -d </dev/null >>"$LOG_DIR/libvirtd.log" 2>&1 || die "libvirtd failed to start again (see $LOG_DIR/libvirtd.log)"
    fi
fi
if ! virsh_ok; then
    pid_alive /run/libvirtd.pid libvirtd || pgrep -x libvirtd >/dev/null ||
        die "libvirtd is not running: run scripts/hypervisor-setup.sh first"
    for _ in $(seq 40); do virsh_ok && break; sleep 0.5; done
    virsh_ok || die "libvirtd does not answer on qemu:///system"
fi
sock_mode=$(stat -c '%a %G' /run/libvirt/libvirt-sock)
[ "$sock_mode" = "770 $SOCK_GROUP" ] ||
    die "/run/libvirt/libvirt-sock is '$sock_mode', not '770 $SOCK_GROUP': is libvirtd reading $LIBVIRTD_CONF?"

# ------------------------------------------------------------------- sshd
install -d -m 0755 /run/sshd   # sshd's privilege separation directory
SSHD_CONFIG="$RIG/sshd_config"
sshd_config=$(cat <<EOF
# vmbot ssh rig (scripts/ssh-rig-setup.sh): NOT the system sshd.
Port $PORT
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
ListenAddress 127.0.0.3
HostKey $RIG/host/ssh_host_ed25519_key
PidFile $RIG/sshd.pid
AuthorizedKeysFile $RIG/authorized_keys/%u
AllowUsers $HV_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitEmptyPasswords no
PermitRootLogin no
UsePAM no
StrictModes yes
DisableForwarding yes
PermitTTY no
PermitTunnel no
PermitUserRC no
PermitUserEnvironment no
ForceCommand $HELPER qemu:///system
LogLevel VERBOSE
EOF
)
config_changed=0
write_if_changed "$SSHD_CONFIG" 0644 root:root "$sshd_config" && config_changed=1
/usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd rejects $SSHD_CONFIG"

if pid_alive "$RIG/sshd.pid" sshd && [ "$config_changed" = 1 ]; then
    log "sshd config changed: restarting the rig's sshd (pid $(cat "$RIG/sshd.pid"))"
    kill "$(cat "$RIG/sshd.pid")"
    for _ in $(seq 50); do pid_alive "$RIG/sshd.pid" sshd || break; sleep 0.1; done
fi
if ! pid_alive "$RIG/sshd.pid" sshd; then
    if ss -Hltn "sport = :$PORT" | grep -q .; then
        die "port $PORT is taken by another program; set VMBOT_SSH_PORT"
    fi
    log "starting the rig's sshd on 127.0.0.1-3:$PORT"
    /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$RIG/sshd.log" || die "sshd failed to start (see $RIG/sshd.log)"
    for _ in $(seq 50); do pid_alive "$RIG/sshd.pid" sshd && break; sleep 0.1; done
fi

# ------------------------------------------------------------------ check
URI="qemu+ssh://$HV_USER@127.0.0.1:$PORT/system?$PARAMS"
ok=0
for _ in $(seq 20); do
    if out=$(cd / && runuser -u "$BOT_USER" -- timeout 20 virsh -c "$URI" uri 2>&1); then ok=1; break; fi
    sleep 0.3
done
[ "$ok" = 1 ] || die "$BOT_USER cannot reach libvirtd over $URI: $out"
log "$BOT_USER reaches libvirtd over ssh ($out)"

# ----------------------------------------------- a vmbot that vmbot-bot can run
bot_can_run() { (cd / && runuser -u "$BOT_USER" -- "$1/bin/vmbot" --help) >/dev/null 2>&1; }
VENV="$CHECKOUT/.venv"
if ! bot_can_run "$VENV"; then
    VENV="$CHECKOUT/.venv-bot"
    want=$(cd "$CHECKOUT" && sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$VENV/.vmbot-lock.sha" 2>/dev/null || true)" != "$want" ] || ! bot_can_run "$VENV"; then
        log "$BOT_USER cannot run $CHECKOUT/.venv/bin/python: building $VENV from /usr/bin/python3"
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
        (cd "$CHECKOUT" &&
            "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes -r requirements.lock &&
            "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .) >>"$LOG_DIR/ssh-rig-venv.log" 2>&1 ||
            die "could not build $VENV (log: $LOG_DIR/ssh-rig-venv.log)"
        echo "$want" >"$VENV/.vmbot-lock.sha"
        chmod -R a+rX "$VENV"
    fi
    bot_can_run "$VENV" || die "$BOT_USER cannot run $VENV/bin/python either (is $CHECKOUT readable by others?)"
fi

# single-quoted: the URIs hold '&' and '?', and scripts/test evals these lines
kv() { case "$2" in *"'"*) die "$1 holds a quote: $2" ;; esac; printf "%s='%s'\n" "$1" "$2"; }
kv VMBOT_SSH_URI "$URI"
kv VMBOT_SSH_CHANGED_URI "qemu+ssh://$HV_USER@127.0.0.2:$PORT/system?$PARAMS"
kv VMBOT_SSH_UNKNOWN_URI "qemu+ssh://$HV_USER@127.0.0.3:$PORT/system?$PARAMS"
kv VMBOT_SSH_BOT_USER "$BOT_USER"
kv VMBOT_SSH_RIG "$RIG"
kv VMBOT_SSH_PORT "$PORT"
kv VMBOT_SSH_VMBOT "$VENV/bin/vmbot"
kv VMBOT_SSH_FINGERPRINT "$(ssh-keygen -lf "$RIG/host/ssh_host_ed25519_key.pub" | cut -d' ' -f2)"
