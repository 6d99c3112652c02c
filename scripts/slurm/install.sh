#!/usr/bin/env bash
# Installs the packages that scripts/slurm/start.sh needs for a single-node SLURM on Debian/Ubuntu
# (slurmctld, slurmd, the client commands, munge). Run as root; starts nothing: without systemd the
# packages' services stay down, and start.sh starts its own daemons. Usage: scripts/slurm/install.sh
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
