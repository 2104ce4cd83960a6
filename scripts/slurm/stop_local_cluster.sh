#!/usr/bin/env bash
# Stops the local SLURM cluster started by start_local_cluster.sh: the daemons whose pids it recorded, in reverse
# order (slurmd, slurmctld, slurmdbd, mariadbd, munged), each by its pid: SIGTERM, then SIGKILL after a grace period.
#
# Usage:   bash scripts/slurm/stop_local_cluster.sh [STATE_DIR] [--purge]
#          STATE_DIR defaults to $NEMO_STEERLM_SLURM_DIR, else /tmp/nemo-steerlm-slurm.
#          --purge also deletes STATE_DIR (database, job state, logs).
# PID 1 on these machines does not reap orphans, so a daemon that exited stays a zombie: "stopped" means
# /proc/PID/stat is gone or shows state Z (kill -0 would still succeed on a zombie). Idempotent.
set -euo pipefail

STATE=""
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        *) STATE="$arg" ;;
    esac
done
STATE="$(realpath -m "${STATE:-${NEMO_STEERLM_SLURM_DIR:-/tmp/nemo-steerlm-slurm}}")"
say() { echo "stop_local_cluster: $*"; }

proc_state() {  # prints the state letter of PID, nothing when the process is gone
    [ -r "/proc/$1/stat" ] && sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]) .*/\1/' "/proc/$1/stat" 2> /dev/null || true
}
running() {  # running PID: true while the process exists and is not a zombie
    local s
    s=$(proc_state "$1")
    [ -n "$s" ] && [ "$s" != Z ]
}

stop_one() {  # stop_one NAME
    local pidfile="$STATE/pids/$1.pid" pid i
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if running "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "${1%%-*}"; then
        kill -TERM "$pid" 2> /dev/null || true
        for i in $(seq 1 100); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            say "$1 (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2> /dev/null || true
            sleep 0.2
        fi
        say "stopped $1 (pid $pid$([ "$(proc_state "$pid")" = Z ] && echo ', now a zombie: PID 1 does not reap'))"
    fi
    rm -f "$pidfile"
}

if [ -d "$STATE/pids" ]; then
    # cancel what is still queued or running, so no slurmstepd outlives its slurmd
    if [ -s "$STATE/pids/slurmctld.pid" ] && running "$(cat "$STATE/pids/slurmctld.pid")"; then
        export SLURM_CONF="$STATE/etc/slurm.conf" PATH="/usr/sbin:$PATH"
        jobs=$(squeue -h -o %A 2> /dev/null | tr '\n' ' ' || true)
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2> /dev/null || true
            for _ in $(seq 1 50); do
                [ -z "$(squeue -h -o %A 2> /dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    for f in "$STATE"/pids/slurmd-*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        [[ $name == *.daemon ]] || stop_one "$name"
    done
    for name in slurmctld slurmdbd mariadbd munged; do
        stop_one "$name"
    done
    left=""
    for f in "$STATE"/pids/*.daemon.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2> /dev/null || true)
        if [ -n "$pid" ] && running "$pid"; then left="$left $pid"; fi
        rm -f "$f"
    done
    [ -z "$left" ] || { echo "stop_local_cluster: error: still running:$left" >&2; exit 1; }
fi
if [ "$PURGE" = 1 ]; then
    rm -rf "$STATE"
    say "removed $STATE"
fi
say "down"
