#!/usr/bin/env bash
# The single-node SLURM the cluster tests start (tests/test_slurm.py, scripts/slurm-up.sh), from
# Debian's packages. Already installed: nothing to do. Not root: say how, and leave it (those
# tests then skip, except under CI=true, where they fail).
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "SLURM is not installed; the cluster tests need it: sudo apt-get install -y slurm-wlm munge" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q slurm-wlm munge >/dev/null || { apt-get update -q && apt-get install -y -q slurm-wlm munge >/dev/null; }
echo "installed $(slurmctld -V 2>/dev/null)"
