#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing `prompt-tuning sweep --launcher slurm` (Debian, root).
#
#   scripts/slurm-local.sh start    install slurm-wlm + munge if missing, start munged, slurmctld, slurmd;
#                                   prints `export SLURM_CONF=...` (eval it: the submitting process needs it)
#   scripts/slurm-local.sh stop     stop the daemons and remove the state folder
#   scripts/slurm-local.sh status   sinfo and squeue
#
# All state lives under $SLURM_LOCAL_DIR (default /tmp/prompt-tuning-slurm). No cgroups, no accounting (so
# `sacct` does not work: finished jobs stay visible to `squeue`/`scontrol` for MinJobAge seconds instead).
# Ports 6817 (slurmctld) and 6818 (slurmd) must be free.
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

stop() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for _ in $(seq 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.5
  done
  pkill -9 -x slurmstepd 2>/dev/null || true
  rm -rf "$DIR"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo; SLURM_CONF=$CONF squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
