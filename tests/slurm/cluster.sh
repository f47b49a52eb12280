#!/usr/bin/env bash
# A single-node SLURM cluster for the tests: `cluster.sh start DIR` installs slurm-wlm and munge with
# apt when they are missing (root only), starts munged, slurmctld and slurmd with their state, logs
# and slurm.conf in DIR, and prints the SLURM_CONF to export; `cluster.sh stop DIR` stops them.
# Exit status 77: the cluster cannot run here (not root, no apt); the tests skip with the message.
set -euo pipefail
action=${1:?start|stop}
dir=$(realpath -m "${2:?DIR}")

skip() { echo "$1" >&2; exit 77; }

if [[ $action == stop ]]; then
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  scancel --full --signal=KILL --user=root 2>/dev/null || true
  sleep 0.5
  exit 0
fi

[[ $(id -u) == 0 ]] || skip "the SLURM test cluster needs root (to start munged, slurmctld and slurmd)"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "slurm-wlm and munge are missing and there is no apt-get to install them"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >"$dir.apt.log" 2>&1 \
    || skip "apt-get install slurm-wlm munge failed (see $dir.apt.log)"
fi

mkdir -p "$dir/state" "$dir/spool" /run/munge /var/log/munge /var/lib/munge /etc/munge
[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
  || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged --force || skip "munged did not start"
fi

node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat >"$dir/slurm.conf" <<CONF
ClusterName=lenet-test
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=1
MinJobAge=300
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF" || skip "slurmctld did not start (see $dir/slurmctld.log)"
slurmd -f "$SLURM_CONF" || skip "slurmd did not start (see $dir/slurmd.log)"
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
    echo "$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
skip "the SLURM node did not become idle within 20 s (see $dir/slurmctld.log and $dir/slurmd.log)"
