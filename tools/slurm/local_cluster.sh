#!/usr/bin/env bash
# A one-node SLURM cluster on this machine: Debian's slurmctld, slurmd and munge, for the tests
# marked `slurm` (tests/test_slurm.py) and for trying the pipeline's SLURM executor
# (docs/cluster.md). It needs root: it installs the packages if they are missing, writes
# /etc/slurm/slurm.conf for this machine (all its CPUs, 90% of its memory, no GPUs, one
# partition `debug`) and starts the daemons, which keep running after it returns.
#
#   bash tools/slurm/local_cluster.sh start     # install if needed, configure, start; waits for the node
#   bash tools/slurm/local_cluster.sh status    # sinfo; exit 0 when the cluster answers
#   bash tools/slurm/local_cluster.sh stop      # scontrol shutdown, end munged
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# written by ssl2det tools/slurm/local_cluster.sh"

say() { echo "[slurm] $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    say "installing slurmctld slurmd slurm-client munge (Debian packages, about a minute)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    local host cpus memory
    host=$(hostname)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: left alone"
        return
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    # sched_interval=1: dependent jobs start within a second of their dependency (default 60)
    cat > "$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=60
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p /run/munge
    chown munge:munge /run/munge
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null
}

wait_for_node() {
    local host
    host=$(hostname)
    for _ in $(seq 1 120); do
        case $(sinfo -h -n "$host" -o %T 2>/dev/null) in
            idle*|mix*|alloc*) say "node $host is up: $(sinfo -h -o '%P %D %c CPUs %m MB')"; return 0 ;;
            down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    say "the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log"
    return 1
}

case ${1:-} in
    start)
        install_packages
        write_config
        start_munge
        pgrep -x slurmctld >/dev/null || slurmctld
        pgrep -x slurmd >/dev/null || slurmd
        wait_for_node
        ;;
    stop)
        scontrol shutdown 2>/dev/null || true
        pkill -x munged 2>/dev/null || true
        say "stopped"
        ;;
    status)
        sinfo
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
