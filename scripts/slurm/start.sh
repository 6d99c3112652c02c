#!/usr/bin/env bash
# Starts a single-node SLURM cluster on this machine from installed packages (install.sh installs
# them; this script installs nothing). For tests, and for trying the workflow's SLURM profile.
#
#   eval "$(scripts/slurm/start.sh [DIR])"   # prints `export SLURM_CONF=DIR/slurm.conf` on stdout
#   snakemake --workflow-profile workflow/profiles/slurm ...
#   scripts/slurm/stop.sh DIR
#
# Must run as root (slurmd starts jobs as their submitting user; munged is started as user munge).
# Everything the daemons write lives under DIR (default: a new temporary directory):
#   DIR/slurm.conf            the cluster's configuration (clients find it through SLURM_CONF)
#   DIR/munge/                munged's own key (made here with mungekey), socket, pid, log, seed
#   DIR/state/, DIR/spool/    slurmctld's state and slurmd's spool
#   DIR/log/                  slurmctld.log, slurmd.log
#   DIR/pid/                  slurmctld.pid, slurmd.pid (stop.sh stops the daemons by these files)
# Outside DIR, one thing: the symlink /run/slurm/conf -> DIR (made here, removed by stop.sh).
# Inside a job, snakemake-executor-plugin-slurm-jobstep runs the rule through `srun` with every
# SLURM_* variable removed, SLURM_CONF included; srun then looks for /etc/slurm/slurm.conf and
# next /run/slurm/conf/slurm.conf (where a configless slurmd keeps its config), so the link is
# what lets job steps find this cluster. start.sh refuses to run when /etc/slurm/slurm.conf
# exists (it would win over the link) or /run/slurm/conf is something else (another SLURM).
# /etc/munge, /run/munge, /var/log/munge and the rest of /etc/slurm are not used.
# The cluster listens on TCP ports 6817 (slurmctld) and 6818 (slurmd) of 127.0.0.1; set
# SLURMCTLD_PORT / SLURMD_PORT to use others (e.g. when those are taken). After a failed start,
# run stop.sh DIR as well: the daemons that did start keep running.
#
# The node: this machine's CPUs, RealMemory = 80% of its memory (SLURM_REAL_MEMORY_MB overrides),
# no GPUs. No accounting database (AccountingStorageType=accounting_storage/none): `sacct` does
# not work, so snakemake-executor-plugin-slurm must query job states with squeue
# (--slurm-status-command squeue); MinJobAge=3600 keeps finished jobs visible to squeue for an hour
# (the tests compare every job the workflow submitted with what slurmctld remembers).
set -euo pipefail

die() {
    echo "start.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root"
for cmd in slurmctld slurmd munged mungekey scontrol sinfo runuser; do
    command -v "$cmd" >/dev/null || die "$cmd not found (install with scripts/slurm/install.sh)"
done
id munge >/dev/null 2>&1 || die "no user munge (installed by the munge package)"
[ ! -e /etc/slurm/slurm.conf ] ||
    die "/etc/slurm/slurm.conf exists: this machine has a SLURM of its own, use that one"

DIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/slurm.XXXXXX")}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
for name in munge/munged.pid pid/slurmctld.pid pid/slurmd.pid; do
    if [ -s "$DIR/$name" ] && kill -0 "$(cat "$DIR/$name")" 2>/dev/null; then
        die "$DIR/$name: already running (stop it first with scripts/slurm/stop.sh $DIR)"
    fi
done
# munged runs as user munge and must reach its directory; clients must reach its socket.
chmod 0755 "$DIR"
runuser -u munge -- test -x "$DIR" ||
    die "user munge cannot enter $DIR: a parent directory is closed to others (pick one in /tmp)"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/pid"
install -d -o munge -g munge -m 0755 "$DIR/munge"

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_TOTAL_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
REAL_MEMORY_MB="${SLURM_REAL_MEMORY_MB:-$((MEM_TOTAL_MB * 8 / 10))}"
CTLD_PORT="${SLURMCTLD_PORT:-6817}"
D_PORT="${SLURMD_PORT:-6818}"

cat >"$DIR/slurm.conf" <<CONF
# Written by scripts/slurm/start.sh: a single-node cluster for tests, everything under $DIR.
ClusterName=ketchup
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/pid/slurmctld.pid
SlurmdPidFile=$DIR/pid/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd: track job processes through /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# finished jobs stay in squeue's view for 5 min: the plugin's squeue status checks need that
MinJobAge=3600
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf"

# job steps find the config through /run/slurm/conf (see the top of this file)
if [ -L /run/slurm/conf ] || [ -e /run/slurm/conf ]; then
    [ "$(readlink /run/slurm/conf)" = "$DIR" ] ||
        die "/run/slurm/conf exists and is not a link to $DIR: another SLURM runs here"
else
    mkdir -p /run/slurm
    ln -s "$DIR" /run/slurm/conf
fi

# munge: a key of our own, and a daemon that keeps everything under DIR/munge
if [ ! -s "$DIR/munge/munge.key" ]; then
    runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
fi
runuser -u munge -- munged \
    --socket="$DIR/munge/munge.socket.2" \
    --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N "$HOST"

# ready when the node is idle (slurmd registered with slurmctld)
for _ in $(seq 1 60); do
    state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)"
    if [ "$state" = "idle" ]; then
        echo "start.sh: single-node SLURM up in $DIR (node $HOST: $CPUS CPUs," \
            "${REAL_MEMORY_MB} MB)" >&2
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "start.sh: node $HOST not idle after 60 s (state: '${state:-none}'); logs in $DIR/log" >&2
tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
exit 1
