#!/usr/bin/env bash
# Stops the single-node SLURM that scripts/slurm/start.sh DIR started: cancels its jobs, then ends
# slurmd, slurmctld and munged by the pid files under DIR (SIGTERM, SIGKILL after 15 s) and
# removes those pid files and the link /run/slurm/conf -> DIR that start.sh made (and /run/slurm
# when it is left empty). Stops nothing else; safe to run twice, or after a start that failed.
# DIR itself (config, logs, state) is left for inspection. Usage: scripts/slurm/stop.sh DIR
set -euo pipefail

[ $# -eq 1 ] || {
    echo "usage: $0 DIR" >&2
    exit 2
}
DIR="$1"
if [ -d "$DIR" ]; then
    DIR="$(cd "$DIR" && pwd -P)"
fi

# jobs still queued or running on this cluster (best effort: slurmctld may already be down)
if [ -s "$DIR/slurm.conf" ] && [ -s "$DIR/pid/slurmctld.pid" ] &&
    command -v scancel >/dev/null; then
    jobs="$(SLURM_CONF="$DIR/slurm.conf" timeout 10 squeue -h -o %A 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        SLURM_CONF="$DIR/slurm.conf" timeout 10 scancel $jobs 2>/dev/null || true
    fi
fi

# stop_by_pidfile PIDFILE NAME: ends the process of PIDFILE if it is still NAME (not a reused pid)
stop_by_pidfile() {
    local pidfile="$1" name="$2" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop.sh: $pidfile: pid $pid ignored SIGTERM, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# slurmd first (it reports to slurmctld), munged last (both authenticate through it)
stop_by_pidfile "$DIR/pid/slurmd.pid" slurmd
stop_by_pidfile "$DIR/pid/slurmctld.pid" slurmctld
stop_by_pidfile "$DIR/munge/munged.pid" munged
if [ -L /run/slurm/conf ] && [ "$(readlink /run/slurm/conf)" = "$DIR" ]; then
    rm -f /run/slurm/conf
    rmdir /run/slurm 2>/dev/null || true
fi
echo "stop.sh: stopped the SLURM of $DIR" >&2
