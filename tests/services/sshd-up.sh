#!/usr/bin/env bash
# sshd-up.sh [DIR] [PORT]
#
# Start an OpenSSH server of our own on 127.0.0.1:PORT for asyncflow's tests (not the
# system one, no systemd), with host and client keys made in DIR. Installs Debian's
# openssh-server/openssh-client with apt-get when missing. Must run as root.
# Idempotent: when the sshd of DIR already runs and accepts our key, it only prints
# the environment again. Run it with `bash` (the execute bit is not needed).
#
# DIR defaults to $ASYNCFLOW_SSHD_DIR, else /tmp/asyncflow-test-sshd.
# PORT defaults to $ASYNCFLOW_SSHD_PORT, else 2222.
# Environment knobs (optional):
#   SSHD_USER          login user whose key is authorized (default: the caller, root)
#   SSHD_CREATE_USER=1 create SSHD_USER when missing (useradd -m, shell bash, password
#                      '*': no password, but not locked, which UsePAM no would refuse)
#   SSHD_MAX_SESSIONS  sessions (channels) per connection  (default 10, OpenSSH's own)
#   SSHD_MAX_STARTUPS  MaxStartups                         (default 100:30:200)
#
# Files in DIR (0755; private keys 0600): ssh_host_ed25519_key(.pub) and id_ed25519(.pub)
# (kept across restarts), authorized_keys, known_hosts ([127.0.0.1]:PORT and
# [localhost]:PORT), ssh_config (Host asyncflow-sshd), sshd_config, sshd.pid, sshd.log,
# env.sh. Logins: key only (PermitRootLogin prohibit-password), no PAM; StrictModes no
# because DIR may sit under /tmp, which sshd's path checks reject.
#
# stdout: only `export NAME=value` lines (the same lines go to DIR/env.sh); progress
# and errors go to stderr. Exit status non-zero, with the log's tail, when sshd does
# not come up; what it started is then stopped again.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-${ASYNCFLOW_SSHD_DIR:-/tmp/asyncflow-test-sshd}}
PORT=${2:-${ASYNCFLOW_SSHD_PORT:-2222}}
USER_NAME=${SSHD_USER:-$(id -un)}
MAX_SESSIONS=${SSHD_MAX_SESSIONS:-10}
MAX_STARTUPS=${SSHD_MAX_STARTUPS:-100:30:200}

export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
log() { echo "sshd-up: $*" >&2; }
die() { echo "sshd-up: ERROR: $*" >&2; exit 1; }
running() { # running PID: exists and is not a zombie (PID 1 may reap late)
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR=${DIR%/}
[ "$(id -u)" = 0 ] || die "must run as root (sshd needs it to log users in)"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number"
if ! getent passwd "$USER_NAME" >/dev/null; then
  [ "${SSHD_CREATE_USER:-0}" = 1 ] || die "no such user: $USER_NAME (SSHD_CREATE_USER=1 creates it)"
  useradd -m -s /bin/bash -p '*' "$USER_NAME" || die "useradd $USER_NAME failed"
  log "created user $USER_NAME"
fi

print_env() {
  local env_file="$DIR/env.sh"
  {
    printf 'export ASYNCFLOW_SSHD_DIR=%q\n' "$DIR"
    printf 'export ASYNCFLOW_SSH_HOST=%q\n' 127.0.0.1
    printf 'export ASYNCFLOW_SSH_PORT=%q\n' "$PORT"
    printf 'export ASYNCFLOW_SSH_USER=%q\n' "$USER_NAME"
    printf 'export ASYNCFLOW_SSH_KEY=%q\n' "$DIR/id_ed25519"
    printf 'export ASYNCFLOW_SSH_KNOWN_HOSTS=%q\n' "$DIR/known_hosts"
    printf 'export ASYNCFLOW_SSH_CONFIG=%q\n' "$DIR/ssh_config"
    printf 'export ASYNCFLOW_SSH_URL=%q\n' "ssh://$USER_NAME@127.0.0.1:$PORT"
  } > "$env_file.tmp"
  mv -f "$env_file.tmp" "$env_file"
  cat "$env_file"
  log "connect: ssh -F $DIR/ssh_config asyncflow-sshd CMD"
  log "     or: ssh -p $PORT -i $DIR/id_ed25519 -o UserKnownHostsFile=$DIR/known_hosts -o IdentitiesOnly=yes $USER_NAME@127.0.0.1 CMD"
}

sshd_pid() { # pid of our sshd (running DIR/sshd_config) if it runs
  local pid
  [ -s "$DIR/sshd.pid" ] || return 1
  pid=$(tr -dc 0-9 < "$DIR/sshd.pid")
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] \
    && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/sshd_config" && echo "$pid"
}

try_login() {
  ssh -F "$DIR/ssh_config" -o BatchMode=yes -o ConnectTimeout=5 asyncflow-sshd true </dev/null >/dev/null 2>&1
}

# ---------------------------------------------------------------- already up?
if pid=$(sshd_pid) && [ -f "$DIR/ssh_config" ] && grep -qx "    Port $PORT" "$DIR/ssh_config" \
   && grep -qx "    User $USER_NAME" "$DIR/ssh_config" && try_login; then
  log "already running (pid $pid, 127.0.0.1:$PORT)"
  print_env
  exit 0
fi
if [ -d "$DIR" ]; then
  bash "$HERE/sshd-down.sh" "$DIR" >&2 || true
fi

# ---------------------------------------------------------------- install
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null \
   || ! command -v ssh-keyscan >/dev/null; then
  command -v apt-get >/dev/null || die "sshd or the OpenSSH client is missing and there is no apt-get"
  log "installing openssh-server openssh-client"
  export DEBIAN_FRONTEND=noninteractive
  tmp_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep the package from starting the system sshd
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    tmp_policy=/usr/sbin/policy-rc.d
  fi
  t0=$SECONDS
  apt-get update -q >&2 || log "apt-get update failed (continuing)"
  rc=0
  apt-get install -y -q --no-install-recommends openssh-server openssh-client >&2 || rc=$?
  if [ -n "$tmp_policy" ]; then rm -f "$tmp_policy"; fi
  [ $rc = 0 ] || die "apt-get install openssh-server openssh-client failed (exit $rc)"
  log "installed in $((SECONDS - t0)) s"
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "127.0.0.1:$PORT is already in use (pass another PORT)"
fi

# A password field starting with '!' makes sshd (UsePAM no) refuse even key logins.
if [ -r /etc/shadow ] && [ "$(getent shadow "$USER_NAME" | cut -d: -f2 | cut -c1)" = '!' ]; then
  log "WARNING: $USER_NAME's password is locked ('!' in /etc/shadow); sshd with UsePAM no will refuse it."
  log "         e.g. 'usermod -p \"*\" $USER_NAME' unlocks key logins without setting a password."
fi

# ---------------------------------------------------------------- files
t_start=$(date +%s.%N)
mkdir -p "$DIR"
chmod 755 "$DIR"   # the login user must reach authorized_keys (sshd reads it as that user)
rm -f "$DIR/env.sh"
# sshd's privilege-separation directory (compiled in); missing without systemd's tmpfiles.
mkdir -p /run/sshd && chmod 755 /run/sshd
[ -s "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "asyncflow-test-host" -f "$DIR/ssh_host_ed25519_key"
[ -s "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "asyncflow-test-client" -f "$DIR/id_ed25519"
cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/ssh_host_ed25519_key" "$DIR/id_ed25519" "$DIR/authorized_keys"
chown "$USER_NAME" "$DIR/authorized_keys"
hostkey=$(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")
printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$PORT" "$hostkey" "$PORT" "$hostkey" > "$DIR/known_hosts"
chmod 644 "$DIR/known_hosts"

cat > "$DIR/sshd_config" <<EOF
# generated by asyncflow tests/services/sshd-up.sh
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# no PAM: keeps PAM's account and session stack out of test logins
UsePAM no
# DIR may sit under /tmp (world-writable), which StrictModes rejects
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
AllowTcpForwarding yes
X11Forwarding no
AcceptEnv LANG LC_*
MaxSessions $MAX_SESSIONS
MaxStartups $MAX_STARTUPS
LogLevel INFO
Subsystem sftp internal-sftp
EOF

cat > "$DIR/ssh_config" <<EOF
# generated by asyncflow tests/services/sshd-up.sh: ssh -F $DIR/ssh_config asyncflow-sshd
Host asyncflow-sshd
    HostName 127.0.0.1
    Port $PORT
    User $USER_NAME
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
EOF

/usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd -t rejected $DIR/sshd_config"

# ---------------------------------------------------------------- start
rm -f "$DIR/sshd.log" "$DIR/sshd.pid"
fail() {
  log "ERROR: $*"
  tail -20 "$DIR/sshd.log" >&2 2>/dev/null || true
  bash "$HERE/sshd-down.sh" "$DIR" >&2 || true
  exit 1
}
# sshd must be started by absolute path (it re-executes itself); it daemonizes and
# writes PidFile; -E sends its log to a file instead of syslog. Its stdio is detached,
# so capturing this script's output does not hang.
(cd / && /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log" </dev/null >/dev/null 2>&1) \
  || fail "sshd did not start"
ok=0
for _ in $(seq 100); do
  if sshd_pid >/dev/null && try_login; then ok=1; break; fi
  sleep 0.1
done
[ $ok = 1 ] || fail "sshd on 127.0.0.1:$PORT does not accept our key (see $DIR/sshd.log)"
# the host key sshd really serves must be the one in known_hosts
scanned=$(ssh-keyscan -p "$PORT" -t ed25519 127.0.0.1 2>/dev/null | awk '{print $2" "$3}')
[ "$scanned" = "$hostkey" ] || fail "host key served ($scanned) differs from $DIR/ssh_host_ed25519_key.pub"
t_end=$(date +%s.%N)
log "sshd pid $(sshd_pid) on 127.0.0.1:$PORT, started in $(awk -v a="$t_start" -v b="$t_end" 'BEGIN{printf "%.2f", b-a}') s"
print_env
