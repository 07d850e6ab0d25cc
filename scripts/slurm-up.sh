#!/usr/bin/env bash
# A single-node SLURM on this machine for the tests (tests/slurm_cluster.py) and for trying
# launcher=slurm: munge with its own key, slurmctld and slurmd on free ports, one node with this
# machine's CPUs and memory, partition "main", accounting off, everything under one directory.
#   eval "$(bash scripts/slurm-up.sh /tmp/slurm)"   # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
#   bash scripts/slurm-down.sh /tmp/slurm           # stops the daemons and munge, removes nothing else
# Needs root (munged and slurmd run as root here) and the slurm-wlm and munge packages
# (scripts/install-slurm.sh).
set -euo pipefail
DIR=$(realpath -m "${1:-$(mktemp -d /tmp/tunelab-slurm.XXXXXX)}")
mkdir -p "$DIR"/{munge,state,spool,log}
chmod 700 "$DIR" "$DIR/munge"

# munge: a fresh key and a socket of our own, so a system munged (if any) is left alone.
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"

read -r CTLD_PORT SLURMD_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
HOST=$(hostname -s)
# The node line as slurmd itself measures it (CPUs, sockets, cores, memory).
NODE=$(slurmd -C | head -1)

cat >"$DIR/slurm.conf" <<CONF
ClusterName=tunelab
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
SchedulerType=sched/backfill
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$DIR/slurm.conf"
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N "$HOST"

for _ in $(seq 60); do
    if [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm-up: the node did not come up idle within 30 s; logs in $DIR/log" >&2
sinfo >&2 || true
bash "$(dirname "$0")/slurm-down.sh" "$DIR"
exit 1
