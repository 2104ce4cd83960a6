#!/usr/bin/env bash
# Starts a real SLURM cluster (Debian slurm 22.05) on this one machine: munged, mariadbd + slurmdbd (accounting, so
# `sacct` works), slurmctld and two slurmd (node1, node2) sharing localhost through MULTIPLE_SLURMD.
#
# Usage:   bash scripts/slurm/start_local_cluster.sh [STATE_DIR]
#          STATE_DIR defaults to $NEMO_STEERLM_SLURM_DIR, else /tmp/nemo-steerlm-slurm.
# Then:    export SLURM_CONF=STATE_DIR/etc/slurm.conf   (or: source STATE_DIR/env.sh)
# Stop:    bash scripts/slurm/stop_local_cluster.sh [STATE_DIR]
#
# Everything (configs, munge key and socket, database, spool, logs, pids) lives under STATE_DIR; nothing in /etc is
# changed. Installs the Debian packages when they are missing (needs root and apt). Idempotent: a daemon whose
# recorded pid is alive is left alone. Takes a few seconds when the packages are present.
# Tunables (environment): NEMO_STEERLM_SLURM_PORT (slurmctld port, default 17000; slurmd use +1 and +2, slurmdbd +3),
# NEMO_STEERLM_SLURM_CPUS (CPUs each fake node claims, default 4), NEMO_STEERLM_SLURM_MEM (MB per node, default 4000).
set -euo pipefail

STATE="$(realpath -m "${1:-${NEMO_STEERLM_SLURM_DIR:-/tmp/nemo-steerlm-slurm}}")"
PORT="${NEMO_STEERLM_SLURM_PORT:-17000}"
CPUS="${NEMO_STEERLM_SLURM_CPUS:-4}"
MEM="${NEMO_STEERLM_SLURM_MEM:-4000}"
CLUSTER=nemolocal
NODES=(node1 node2)
T0=$(date +%s%N)

say() { echo "start_local_cluster: $*"; }
die() { echo "start_local_cluster: error: $*" >&2; exit 1; }

# --- packages -------------------------------------------------------------------------------------------------------
need_install=0
for bin in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$bin" > /dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "SLURM packages are missing and installing them needs root"
    say "installing slurmctld slurmd slurm-client munge slurmdbd mariadb-server (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server \
        > "/tmp/nemo-steerlm-slurm-apt.log" 2>&1 \
        || { apt-get update -qq > /dev/null 2>&1 && apt-get install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge slurmdbd mariadb-server >> "/tmp/nemo-steerlm-slurm-apt.log" 2>&1; } \
        || die "apt-get install failed, see /tmp/nemo-steerlm-slurm-apt.log"
fi
export PATH="/usr/sbin:/sbin:$PATH"
[ "$(id -u)" = 0 ] || die "the daemons run as root here (SlurmUser=root); run as root"

mkdir -p "$STATE"/{etc,munge,mysql,log,pids,spool/ctld} "${NODES[@]/#/$STATE/spool/}"
chmod 755 "$STATE" "$STATE/munge"

# --- pid bookkeeping: alive = /proc/PID/stat exists, state is not Z (PID 1 here does not reap), right program ---------
alive() {  # alive NAME EXPECTED_COMMAND_SUBSTRING
    local pidfile="$STATE/pids/$1.pid" pid state
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]) .*/\1/' "/proc/$pid/stat")
    [ "$state" != Z ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$2"
}
launch() {  # launch NAME EXPECTED_SUBSTRING COMMAND...   (foreground daemon, detached, pid recorded)
    local name=$1 expect=$2
    shift 2
    if alive "$name" "$expect"; then
        say "$name already running (pid $(cat "$STATE/pids/$name.pid"))"
        return
    fi
    setsid "$@" < /dev/null >> "$STATE/log/$name.console" 2>&1 &
    echo $! > "$STATE/pids/$name.pid"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what (logs: $STATE/log)"
        sleep 0.2
    done
}

# --- configuration --------------------------------------------------------------------------------------------------
MUNGE_SOCKET="$STATE/munge/munge.socket"
MYSQL_SOCKET="$STATE/mysql/mysqld.sock"
if [ ! -s "$STATE/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$STATE/munge/munge.key"
fi
chmod 600 "$STATE/munge/munge.key"

cat > "$STATE/etc/slurm.conf" <<EOF
# Written by scripts/slurm/start_local_cluster.sh: two fake nodes on one host (Debian's MULTIPLE_SLURMD build).
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/pids/slurmctld.daemon.pid
SlurmdPidFile=$STATE/pids/slurmd-%n.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 3))
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=node[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((PORT + 1))-$((PORT + 2))] CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

cat > "$STATE/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm/start_local_cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$((PORT + 3))
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.daemon.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db_$CLUSTER
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"

cat > "$STATE/env.sh" <<EOF
# source this to use the local cluster's client commands (sbatch, squeue, sacct, scontrol, scancel)
export SLURM_CONF=$STATE/etc/slurm.conf
export PATH=/usr/sbin:\$PATH
EOF
export SLURM_CONF="$STATE/etc/slurm.conf"

# --- munge ----------------------------------------------------------------------------------------------------------
launch munged munged munged -F --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
wait_for 10 "munged" sh -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
chmod 755 "$STATE/munge"
chmod 777 "$MUNGE_SOCKET"

# --- mariadb (unix socket only, root by socket authentication) -------------------------------------------------------
if [ ! -d "$STATE/mysql/data/mysql" ]; then
    say "initialising the accounting database in $STATE/mysql/data"
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql/data" --auth-root-authentication-method=socket \
        --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
fi
launch mariadbd mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql/data" --socket="$MYSQL_SOCKET" \
    --pid-file="$STATE/mysql/mariadbd.pid" --skip-networking --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M
wait_for 30 "mariadbd" mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root -e "SELECT 1"

# --- slurmdbd (the MariaDB client library takes its default socket from MYSQL_UNIX_PORT) ------------------------------
# slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF
launch slurmdbd slurmdbd env MYSQL_UNIX_PORT="$MYSQL_SOCKET" slurmdbd -D
wait_for 30 "slurmdbd" sacctmgr -n show cluster

if [ -z "$(sacctmgr -n -P show cluster format=cluster where cluster=$CLUSTER)" ]; then
    sacctmgr -i add cluster "$CLUSTER" > /dev/null
fi

# --- slurmctld and the two slurmd --------------------------------------------------------------------------------------
launch slurmctld slurmctld slurmctld -D -i -f "$SLURM_CONF"
wait_for 30 "slurmctld" scontrol ping
for node in "${NODES[@]}"; do
    launch "slurmd-$node" "slurmd" slurmd -D -N "$node" -f "$SLURM_CONF"
done

nodes_idle() {
    local states
    states=$(sinfo -h -N -o "%N %T" 2> /dev/null | sort -u)
    [ "$(echo "$states" | grep -c -E ' (idle|mixed|allocated)$')" = "${#NODES[@]}" ]
}
deadline=$(($(date +%s) + 60))
until nodes_idle; do
    # a node left DOWN by an earlier unclean stop comes back with ReturnToService=2 once its slurmd registers
    sinfo -h -N -o "%N %T" 2> /dev/null | awk '$2 ~ /down|drain/ {print $1}' | sort -u | while read -r n; do
        scontrol update NodeName="$n" State=RESUME > /dev/null 2>&1 || true
    done
    [ "$(date +%s)" -lt "$deadline" ] || die "nodes not idle after 60 s: $(sinfo -N 2>&1) (logs: $STATE/log)"
    sleep 0.3
done
ms=$((($(date +%s%N) - T0) / 1000000))
say "up in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s: $(sinfo -h -N -o '%N:%T' | sort -u | tr '\n' ' ')"
say "export SLURM_CONF=$SLURM_CONF"
