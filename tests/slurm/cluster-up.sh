#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py and for trying
# profiles/slurm by hand (Debian 12 packages, Slurm 22.05, no systemd needed).
#
#   sudo tests/slurm/cluster-up.sh          # idempotent: reuses daemons it started before
#   sinfo; snakemake --profile profiles/slurm ...
#   sudo tests/slurm/cluster-down.sh        # stops only the daemons this script started
#
# Installs munge slurmctld slurmd slurm-client when missing (a policy-rc.d keeps apt from
# starting services), writes $JWST_SLURM_TEST_DIR/slurm.conf for a node named `hostname -s`
# with all CPUs and 85% of its memory, starts munged (unless one answers already),
# slurmctld and slurmd in the foreground under setsid, records their PIDs in
# $JWST_SLURM_TEST_DIR/pids and waits until `sinfo` reports the node idle.
# The configuration lives in $JWST_SLURM_TEST_DIR; /etc/slurm/slurm.conf becomes a link to it
# (the jobs' own srun calls read only the default path: snakemake's jobstep drops SLURM_CONF),
# which the script refuses to do when that file exists and is not its link.
#
# Exit status: 0 up; 2 not root; 3 packages could not be installed; 4 daemons did not
# come up (their logs are printed); 5 a Slurm not set up by this script is in the way
# (ports 6817/6818 in use, or an /etc/slurm/slurm.conf of its own).

set -euo pipefail

STATE=${JWST_SLURM_TEST_DIR:-/tmp/jwst-slurm}
CONF=$STATE/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
PIDS=$STATE/pids
HOST=$(hostname -s)
WAIT_S=${JWST_SLURM_UP_TIMEOUT:-60}

die() { local code=$1; shift; echo "cluster-up: $*" >&2; exit "$code"; }

[[ $(id -u) == 0 ]] || die 2 "must run as root (installs packages, starts munged as user munge and the Slurm daemons as root)"

# ----------------------------------------------------------------------------- packages
install_packages() {
    local missing=() created_policy=0
    for cmd in munged slurmctld slurmd sbatch; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    [[ ${#missing[@]} == 0 ]] && return 0
    echo "cluster-up: installing munge slurmctld slurmd slurm-client (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die 3 "apt-get not found: install munge, slurmctld, slurmd and slurm-client yourself"
    # Without systemd, the packages' postinst would try (and fail) to start the services.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    local pkgs=(munge slurmctld slurmd slurm-client) status=0
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$STATE/apt.log" 2>&1 ||
        { apt-get update -q >>"$STATE/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/apt.log" 2>&1; } ||
        status=$?
    [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $status == 0 ]] || { tail -n 20 "$STATE/apt.log" >&2; die 3 "apt-get install ${pkgs[*]} failed (log: $STATE/apt.log)"; }
}

# ----------------------------------------------------------------------------- daemons
alive() {  # alive NAME: the PID recorded for NAME runs a process of that name
    local pid
    pid=$(awk -v n="$1" '$1 == n {print $2}' "$PIDS" 2>/dev/null | tail -n 1)
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$1" ]]
}

start() {  # start NAME CMD...: run in the foreground of its own session, record the PID
    local name=$1; shift
    setsid "$@" </dev/null >>"$STATE/$name.out" 2>&1 &
    echo "$name $!" >>"$PIDS"
    echo "cluster-up: started $name (pid $!)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_conf() {
    local node_line cpus real_mb
    # slurmd -C prints this machine's node line (CPUs, sockets, cores, threads, memory).
    node_line=$(slurmd -C | head -n 1)
    real_mb=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node_line")
    cpus=$(nproc)
    # 85% of the memory for jobs; the rest for the OS and the daemons. Without the
    # topology fields Slurm takes CPUs as cores, which matches nproc on any machine.
    cat >"$CONF.tmp" <<EOF
# Written by tests/slurm/cluster-up.sh: a one-node test cluster on $HOST.
ClusterName=jwsttest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups without systemd: processes tracked through /proc, no task affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores and memory are consumable: several jobs share the node, each within its --mem.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem would otherwise take the whole node's memory.
DefMemPerCPU=1024
# Memory is sampled every second and a step above its --mem is killed (OUT_OF_MEMORY),
# as cgroups would do on a production cluster.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
# No slurmdbd: sacct does not work, so the profile checks job states with squeue, which
# shows a finished job for MinJobAge seconds (>= 3 x slurm-init-seconds-before-status-checks).
# One hour here so that the test can still read every job of its runs with scontrol.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
# A node that was down (e.g. after cluster-down) returns to service when slurmd registers.
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$cpus RealMemory=$((real_mb * 85 / 100)) State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -sfn "$CONF" "$ETC_CONF"
}

wait_idle() {
    local t state=""
    for ((t = 0; t < WAIT_S; t++)); do
        state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)
        case $state in
            idle | mixed | allocated | completing) echo "cluster-up: node $HOST is $state"; return 0 ;;
            drain* | down*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    for log in munged.out slurmctld.log slurmctld.out slurmd.log slurmd.out; do
        [[ -s $STATE/$log ]] && { echo "--- $STATE/$log" >&2; tail -n 15 "$STATE/$log" >&2; }
    done
    die 4 "node $HOST not idle after ${WAIT_S}s (sinfo says '${state:-nothing}')"
}

mkdir -p "$STATE/ctld" "$STATE/spool"
install_packages
getent hosts "$HOST" >/dev/null || die 4 "host name $HOST does not resolve (SlurmctldHost must)"

# munged: reuse one that already answers (e.g. the machine's own), else start ours.
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    alive munged || {
        install -d -o munge -g munge -m 0755 /run/munge
        install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
        [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
        start munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
    }
    for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || { tail -n 15 "$STATE/munged.out" /var/log/munge/munged.log >&2 || true; die 4 "munged does not answer"; }
fi

if alive slurmctld && alive slurmd; then
    echo "cluster-up: slurmctld and slurmd already running (started earlier by this script)"
else
    if ! alive slurmctld && ! alive slurmd && { port_busy 6817 || port_busy 6818; }; then
        die 5 "ports 6817/6818 are in use by a Slurm this script did not start; stop it first"
    fi
    if [[ -e $ETC_CONF && $(readlink "$ETC_CONF") != "$CONF" ]]; then
        die 5 "$ETC_CONF exists and is not a link to $CONF: this machine has a Slurm configuration of its own"
    fi
    write_conf
    alive slurmctld || start slurmctld slurmctld -D -i -f "$CONF"
    alive slurmd || start slurmd slurmd -D -f "$CONF"
fi
wait_idle
echo "cluster-up: ready ($ETC_CONF -> $CONF)"
