#!/usr/bin/env bash
# A SLURM test cluster on this machine: Debian's slurmctld, slurmd and munge, for the tests marked
# `slurm` (tests/test_slurm.py) and for trying the pipeline's SLURM executor (docs/cluster.md).
# It needs root: it installs the packages if they are missing, writes /etc/slurm/slurm.conf and
# starts the daemons, which keep running after it returns.
#
#   bash tools/slurm/local_cluster.sh start [--nodes N]   # install if needed, configure, start
#   bash tools/slurm/local_cluster.sh status              # sinfo; exit 0 when the cluster answers
#   bash tools/slurm/local_cluster.sh stop                # daemons, namespaces, bridge, hosts lines
#
# The cluster: this machine is node `$(hostname)` (all its CPUs, 90% of its memory, no GPUs) in
# partition `debug`, the default. With --nodes N (N >= 2) there are N more compute nodes,
# mn1..mnN in partition `multi`, each a slurmd in its own network namespace with its own address
# on a bridge (10.88.0.1K/24; the controller listens on the bridge's 10.88.0.1), the file system
# and the process table shared as a cluster's file system is. The namespaces route only to the
# bridge and this machine's own addresses: no traffic leaves them. Host names resolve to the bridge addresses through /etc/hosts lines
# this script adds and removes. (../shared/docs/slurm-multinode.md: the recipe and its traps.)
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# written by ssl2det tools/slurm/local_cluster.sh"
HOSTS_MARK="# ssl2det test cluster"
BRIDGE=br-ssl2det
NET=10.88.0

say() { echo "[slurm] $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    say "installing slurmctld slurmd slurm-client munge (Debian packages, about a minute)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
}

write_config() {  # $1: namespace nodes (0 for none)
    local host cpus memory nodes=$1 controller
    host=$(hostname)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: left alone"
        return
    fi
    controller=$host
    [ "$nodes" -gt 0 ] && controller="$host($NET.1)"  # the address the namespaces reach
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    # sched_interval=1: dependent jobs start within a second of their dependency (default 60);
    # SlurmdTimeout 30: a lost node is DOWN within 30 s (default 300), docs/cluster.md
    cat > "$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$controller
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd.%n.pid
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=30
SlurmdTimeout=30
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.%n.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$nodes" -gt 0 ]; then
        for i in $(seq 1 "$nodes"); do
            echo "NodeName=mn$i NodeAddr=$NET.1$i CPUs=1 RealMemory=4000 State=UNKNOWN" >> "$CONF"
        done
        echo "PartitionName=multi Nodes=mn[1-$nodes] MaxTime=INFINITE State=UP" >> "$CONF"
    fi
}

configured_nodes() {  # the namespace nodes the written config describes
    grep -c '^NodeName=mn' "$CONF" 2>/dev/null || true
}

start_network() {  # $1: nodes
    local nodes=$1
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    for i in $(seq 1 "$nodes"); do
        if ! ip netns list | grep -qw "mn$i"; then
            ip netns add "mn$i"
            ip link add "veth-mn$i" type veth peer name eth0 netns "mn$i"
            ip link set "veth-mn$i" master "$BRIDGE" up
            nsenter --net="/var/run/netns/mn$i" ip addr add "$NET.1$i/24" dev eth0
            nsenter --net="/var/run/netns/mn$i" ip link set eth0 up
            nsenter --net="/var/run/netns/mn$i" ip link set lo up
            # a route to this machine's own addresses only (srun and the controller answer
            # there), no default route: nothing leaves the namespaces
            for address in $(getent ahostsv4 "$(hostname)" | awk '{print $1}' | sort -u); do
                case $address in 127.*) ;; *)
                    nsenter --net="/var/run/netns/mn$i" ip route add "$address/32" via "$NET.1" ;;
                esac
            done
        fi
        grep -q "^$NET.1$i mn$i " /etc/hosts || echo "$NET.1$i mn$i $HOSTS_MARK" >> /etc/hosts
    done
}

stop_network() {
    for ns in $(ip netns list 2>/dev/null | awk '/^mn[0-9]+/ {print $1}'); do
        ip netns del "$ns"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    sed -i "/$HOSTS_MARK\$/d" /etc/hosts
}

start_munge() {
    mkdir -p /run/munge
    chown munge:munge /run/munge
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null
}

slurmd_running() {  # $1: node name (a plain `slurmd` is this machine's)
    pgrep -f "^slurmd( .*)? -N $1\$" >/dev/null || {
        [ "$1" = "$(hostname)" ] && pgrep -fx slurmd >/dev/null; }
}

wait_for_nodes() {
    local want=$1 up
    for _ in $(seq 1 120); do
        up=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)/' | sort -u | wc -l)
        if [ "$up" -ge "$want" ]; then
            say "up: $(sinfo -h -o '%P %D nodes %c CPUs %m MB' | tr '\n' ';')"
            return 0
        fi
        for node in $(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(down|drain)/ {print $1}'); do
            scontrol update nodename="$node" state=resume 2>/dev/null || true
        done
        sleep 0.5
    done
    say "not every node came up; see /var/log/slurm/slurmctld.log and slurmd.*.log"
    sinfo -N || true
    return 1
}

stop_daemons() {
    scontrol shutdown 2>/dev/null || true
    for _ in $(seq 1 40); do
        pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
        sleep 0.25
    done
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
}

case ${1:-} in
    start)
        nodes=0
        if [ "${2:-}" = "--nodes" ]; then
            nodes=${3:?--nodes takes a number}
            [ "$nodes" -ge 2 ] || { echo "--nodes takes 2 or more" >&2; exit 2; }
        fi
        install_packages
        if pgrep -x slurmctld >/dev/null && [ "$(configured_nodes)" != "$nodes" ]; then
            say "restarting with $nodes namespace node(s) (was $(configured_nodes))"
            stop_daemons
        fi
        write_config "$nodes"
        [ "$nodes" -gt 0 ] && start_network "$nodes"
        start_munge
        pgrep -x slurmctld >/dev/null || slurmctld
        slurmd_running "$(hostname)" || slurmd -N "$(hostname)"
        for i in $(seq 1 "$nodes"); do
            # nsenter, not `ip netns exec`: that remounts /sys, and slurmd then finds no cgroup fs
            slurmd_running "mn$i" || nsenter --net="/var/run/netns/mn$i" slurmd -N "mn$i"
        done
        wait_for_nodes $((nodes + 1))
        ;;
    stop)
        stop_daemons
        stop_network
        pkill -x munged 2>/dev/null || true
        say "stopped"
        ;;
    status)
        sinfo
        ;;
    *)
        echo "usage: $0 start [--nodes N] | stop | status" >&2
        exit 2
        ;;
esac
