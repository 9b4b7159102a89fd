#!/usr/bin/env bash
# slurm-down.sh [STATE_DIR]
#
# Stop the cluster that slurm-up.sh started from STATE_DIR (default
# $ASYNCFLOW_SLURM_DIR, else /tmp/asyncflow-test-slurm): cancel its jobs, stop the
# slurmd's, slurmctld and munged by the pids in their pid files, then every leftover
# process carrying ASYNCFLOW_SLURM_INSTANCE=STATE_DIR in its environment (a slurmstepd
# or slurmscriptd that outlived its daemon). Never kills by name.
# Keeps STATE_DIR (logs, munge key); `rm -rf STATE_DIR` afterwards for a clean slate.
# Exit 0 when nothing of STATE_DIR is left running.
set -uo pipefail

STATE_DIR=${1:-${ASYNCFLOW_SLURM_DIR:-/tmp/asyncflow-test-slurm}}
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$PWD/$STATE_DIR" ;; esac
STATE_DIR=${STATE_DIR%/}
CONF="$STATE_DIR/etc/slurm.conf"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
log() { echo "slurm-down: $*" >&2; }

running() { # running PID: exists and is not a zombie (PID 1 may reap late)
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

pid_of() { # pid_of PIDFILE COMM: prints the pid if it runs with that comm
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 < "$1")
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

stop_pids() { # stop_pids PID...: TERM them all, wait up to 10 s, then KILL what is left
  local p alive=""
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for _ in $(seq 100); do
    alive=""
    for p in "$@"; do running "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $alive 2>/dev/null && log "killed after 10 s:$alive"
  for _ in $(seq 20); do
    alive=""
    for p in "$@"; do running "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
}

marked_pids() { # processes whose environment carries this instance's marker
  local p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    [ "$pid" = "$BASHPID" ] && continue
    { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qxF "ASYNCFLOW_SLURM_INSTANCE=$STATE_DIR" \
      && running "$pid" && echo "$pid"
  done
}

if [ ! -d "$STATE_DIR" ]; then
  log "no state dir $STATE_DIR: nothing to stop"
  exit 0
fi

ctld=$(pid_of "$STATE_DIR/run/slurmctld.pid" slurmctld || true)
slurmd_pids=""
for f in "$STATE_DIR"/run/slurmd-*.pid; do
  [ -e "$f" ] || continue
  p=$(pid_of "$f" slurmd || true)
  [ -n "$p" ] && slurmd_pids="$slurmd_pids $p"
done
munged_pid=$(pid_of "$STATE_DIR/munge/munged.pid" munged || true)

# 1. cancel jobs while the controller still runs, so that Slurm ends their tasks
if [ -n "$ctld" ] && [ -f "$CONF" ]; then
  jobs=$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 150); do   # up to 30 s
      [ -z "$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

# 2. daemons by pid file, all at once (each takes 1-2 s to exit), and leftovers of
#    this instance (slurmstepd, slurmscriptd) found by the environment marker
extra=""
for pid in $(marked_pids); do
  case " $slurmd_pids $ctld $munged_pid " in *" $pid "*) ;; *) extra="$extra $pid" ;; esac
done
all="$slurmd_pids $ctld $munged_pid $extra"
if [ -n "${all// }" ]; then
  # shellcheck disable=SC2086
  stop_pids $all
  log "stopped:$([ -n "$slurmd_pids" ] && echo " slurmd$slurmd_pids")$([ -n "$ctld" ] && echo " slurmctld $ctld")$([ -n "$munged_pid" ] && echo " munged $munged_pid")$([ -n "$extra" ] && echo " others$extra")"
fi
rm -f "$STATE_DIR/env.sh"   # tests read it to find the cluster: it is gone now

# 3. the /etc/slurm/slurm.conf link made by slurm-up.sh
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
  rm -f /etc/slurm/slurm.conf
fi

left=$(marked_pids | tr '\n' ' ')
if [ -n "${left// }" ]; then
  log "still running: $left"
  # shellcheck disable=SC2086
  ps -o pid,comm,args -p $left >&2 2>/dev/null || true
  exit 1
fi
log "nothing of $STATE_DIR is running"
exit 0
