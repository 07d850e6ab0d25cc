#!/usr/bin/env bash
# Stops what scripts/slurm-up.sh DIR started (slurmd, slurmctld, munged), by their pid files,
# and waits until they are gone. Leaves DIR (its logs) in place.
set -uo pipefail
DIR=${1:?usage: slurm-down.sh DIR}
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
done
exit 0
