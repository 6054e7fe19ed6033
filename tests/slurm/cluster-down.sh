#!/usr/bin/env bash
# Stops the one-node test cluster of tests/slurm/cluster-up.sh: cancels its jobs, then stops
# the daemons whose PIDs cluster-up.sh recorded (slurmd, slurmctld, munged if it started
# one), and nothing else; removes the /etc/slurm/slurm.conf link it made. Idempotent: without
# recorded daemons it does nothing.

set -euo pipefail

STATE=${JWST_SLURM_TEST_DIR:-/tmp/jwst-slurm}
PIDS=$STATE/pids

[[ -s $PIDS ]] || { echo "cluster-down: nothing recorded in $PIDS; nothing to stop"; exit 0; }

recorded() {  # recorded NAME: PID recorded for NAME if that process still runs under that name
    local pid
    pid=$(awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1)
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$1" ]] && echo "$pid"
    return 0
}

stop() {  # stop NAME: SIGTERM, up to 15 s, then SIGKILL
    local pid
    pid=$(recorded "$1")
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do [[ -d /proc/$pid ]] || break; sleep 0.5; done
    if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    echo "cluster-down: stopped $1 (pid $pid)"
}

# Jobs first, while slurmctld and slurmd can still end them (their slurmstepd exit too).
if [[ -n $(recorded slurmctld) ]]; then
    jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        echo "cluster-down: cancelling jobs" $jobs
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z $(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null) ]] && break
            sleep 1
        done
    fi
fi
stop slurmd
stop slurmctld
stop munged
rm -f "$PIDS"
[[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/slurm.conf" ]] && rm -f /etc/slurm/slurm.conf
echo "cluster-down: done"
