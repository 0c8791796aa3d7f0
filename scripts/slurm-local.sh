#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing `prompt-tuning sweep --launcher slurm` (Debian, root).
#
#   scripts/slurm-local.sh start    install slurm-wlm + munge if missing, start munged, slurmctld, slurmd;
#                                   prints `export SLURM_CONF=...` (eval it: the submitting process needs it)
#   scripts/slurm-local.sh stop     cancel this cluster's jobs, stop the daemons it started, remove the state folder
#   scripts/slurm-local.sh status   sinfo and squeue
#
# All state lives under $SLURM_LOCAL_DIR (default /tmp/prompt-tuning-slurm). No cgroups, no accounting (so
# `sacct` does not work: finished jobs stay visible to `squeue`/`scontrol` for MinJobAge seconds instead).
# Ports 6817 (slurmctld) and 6818 (slurmd) must be free.
#
# `stop` ends only what `start` started, by pid, on a machine others share: the daemons whose pid files are in
# the state folder (munged only if `start` launched it), each with its child processes, and the job steps of
# this cluster (the `slurmstepd` processes working in the state folder, where this cluster's slurmd starts them)
# with their tasks. A pid is signalled only while it still runs that program for this folder (pids are reused):
# other users' slurmstepd, slurmd or munged are never touched.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/prompt-tuning-slurm}
NODE=ptnode
CONF=$DIR/slurm.conf

say() { echo "slurm-local: $*" >&2; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4 ))  # below the machine's: else drained
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat > "$CONF" <<EOF
ClusterName=prompttuning
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=3600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install
  for port in 6817 6818; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then say "port $port is in use (another slurm?)"; exit 1; fi
  done
  write_conf
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown "$(id -u)" /var/log/munge /var/lib/munge 2>/dev/null || true  # munged runs as this user
  chmod 755 /run/munge  # clients (slurmctld, sbatch) must reach munged's socket
  if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || create-munge-key >/dev/null 2>&1
    munged --force --pid-file="$DIR/munged.pid"
  fi
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF"
  slurmd -f "$CONF" -N "$NODE"
  for _ in $(seq 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qx idle; then
      say "up: node $NODE ($(nproc) CPUs), state in $DIR"
      echo "export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  say "the node did not become idle in 30 s:"; sinfo -N -l >&2 || true; tail -20 "$DIR"/log/*.log >&2 || true
  exit 1
}

# runs PID the program NAME of this cluster? (a daemon's command line names the state folder; a job step, which
# blanks its command line and environment, works in the folder slurmd started it in: the state folder's log/)
ours() {
  local pid=$1 name=$2 cwd
  [ -r "/proc/$pid/cmdline" ] || return 1
  if [ "$name" = slurmstepd ]; then
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmstepd ] || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    [[ $cwd == "$DIR" || $cwd == "$DIR"/* ]]
    return
  fi
  local cmd
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$name"* && $cmd == *"$DIR"* ]]
}

# PID and its descendants, children first
tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do tree "$child"; done
  echo "$1"
}

# the processes to stop: this cluster's job steps with their tasks, then its daemons with their children
targets() {
  local pid name pidfile
  for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    if ours "$pid" slurmstepd; then tree "$pid"; fi
  done
  for name in slurmd slurmctld munged; do
    pidfile=$DIR/$name.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null) || continue
    [[ $pid =~ ^[0-9]+$ ]] && ours "$pid" "$name" && tree "$pid"
  done
  return 0
}

# PID:START for each live PID (START: its start time, so that a pid reused meanwhile is never taken for it); a
# zombie (ended, not yet reaped by its parent) is not live
identify() {
  local pid stat
  for pid in "$@"; do
    stat=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a stat <<< "$stat"
    [ "${stat[0]:-Z}" != Z ] && echo "$pid:${stat[19]}"
  done
  return 0
}

# the PIDs of PID:START entries that still run the same process
still() {
  local entry
  for entry in "$@"; do
    [ "$(identify "${entry%%:*}")" = "$entry" ] && echo "${entry%%:*}"
  done
  return 0
}

stop() {
  if [ ! -d "$DIR" ]; then say "nothing to stop: no state folder $DIR"; return; fi
  local entries jobs left
  # first the jobs, through this cluster's own controller: slurmd ends their steps and tasks itself
  if [ -f "$CONF" ] && jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %A 2>/dev/null) && [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    SLURM_CONF=$CONF timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 30); do  # KillWait=5: a task that ignores SIGTERM gets SIGKILL from its step
      [ -z "$(SLURM_CONF=$CONF timeout 5 squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  # shellcheck disable=SC2046
  entries=$(identify $(targets))
  if [ -n "$entries" ]; then
    # shellcheck disable=SC2086
    kill $(still $entries) 2>/dev/null || true
    for _ in $(seq 20); do
      # shellcheck disable=SC2086
      left=$(still $entries)
      [ -z "$left" ] && break
      sleep 0.5
    done
    # shellcheck disable=SC2086
    [ -n "$left" ] && { kill -9 $(still $entries) 2>/dev/null || true; }
  fi
  rm -rf "$DIR"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo; SLURM_CONF=$CONF squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
