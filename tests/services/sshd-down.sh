#!/usr/bin/env bash
# sshd-down.sh [DIR]
#
# Stop the sshd that sshd-up.sh started from DIR (default $ASYNCFLOW_SSHD_DIR, else
# /tmp/asyncflow-test-sshd): the pid in DIR/sshd.pid (checked to be an sshd running
# DIR/sshd_config) with its process tree (open sessions and their commands), then every
# process still running that was started through it: sshd puts
# SSH_CONNECTION="<client ip> <client port> 127.0.0.1 <PORT>" in the environment of each
# command, and a command run without a pty outlives its closed channel or connection.
# SIGTERM, SIGKILL after 5 s. Never kills by name. Keeps DIR (keys, known_hosts, log).
# Exit 0 when all is stopped.
set -uo pipefail

DIR=${1:-${ASYNCFLOW_SSHD_DIR:-/tmp/asyncflow-test-sshd}}
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR=${DIR%/}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
log() { echo "sshd-down: $*" >&2; }
running() { # running PID: exists and is not a zombie (PID 1 may reap late)
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

if [ ! -d "$DIR" ]; then
  log "no directory $DIR: nothing to stop"
  exit 0
fi
PORT=$(awk '$1 == "Port" {print $2; exit}' "$DIR/sshd_config" 2>/dev/null)

descendants() { # all descendants of $1, parents first
  local kids k
  kids=$(ps -e -o pid=,ppid= | awk -v p="$1" '$2 == p {print $1}')
  for k in $kids; do echo "$k"; descendants "$k"; done
}

remote_cmds() { # processes started through our sshd (SSH_CONNECTION ends in 127.0.0.1 PORT)
  [ -n "$PORT" ] || return 0
  local p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    [ "$pid" = "$BASHPID" ] && continue
    { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qE "^SSH_CONNECTION=[^ ]+ [0-9]+ 127\.0\.0\.1 $PORT\$" \
      && running "$pid" && echo "$pid"
  done
}

stop_all() { # TERM the given pids, wait up to 5 s, KILL the rest
  local alive="" p
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for _ in $(seq 50); do
    alive=""
    for p in "$@"; do running "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $alive 2>/dev/null
  log "killed after 5 s:$alive"
  for _ in $(seq 20); do
    alive=""
    for p in "$@"; do running "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
}

pid=""
if [ -s "$DIR/sshd.pid" ]; then
  pid=$(tr -dc 0-9 < "$DIR/sshd.pid")
  if [ -z "$pid" ] || ! running "$pid" || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != sshd ] \
     || ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/sshd_config"; then
    pid=""
  fi
fi

if [ -n "$pid" ]; then
  tree=$(descendants "$pid")
  # shellcheck disable=SC2086
  stop_all "$pid" $tree
  if running "$pid"; then log "sshd $pid still running"; exit 1; fi
  log "stopped sshd $pid$([ -n "$tree" ] && echo " and its sessions: $(echo $tree)")"
else
  log "sshd of $DIR is not running"
fi
rm -f "$DIR/sshd.pid" "$DIR/env.sh"   # tests read env.sh to find the server: it is gone now

# commands that outlived their session (no pty, channel or connection closed)
left=$(remote_cmds)
if [ -n "$left" ]; then
  log "stopping commands left over from sessions on port $PORT: $(echo $left)"
  # shellcheck disable=SC2086
  stop_all $left
  left=$(remote_cmds)
  if [ -n "$left" ]; then log "still running: $(echo $left)"; exit 1; fi
fi
exit 0
