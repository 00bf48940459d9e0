#!/usr/bin/env bash
# A Slurm cluster on localhost, for trying `snakemake --profile slurm`
# on a laptop or a CI machine (Debian/Ubuntu packages, run as root):
#
#   apt-get install munge slurmctld slurmd slurm-client
#   scripts/slurm-cluster.sh up       # start (again): idempotent, waits until the node is idle
#   scripts/slurm-cluster.sh status   # daemons, sinfo
#   scripts/slurm-cluster.sh env      # prints `export SLURM_CONF=...` for the client commands
#   scripts/slurm-cluster.sh down     # stops only the daemons `up` started
#
# Configuration, state, spool and logs live in $STYLEPIPE_SLURM_DIR
# (default: ${TMPDIR:-/tmp}/stylepipe-slurm). The node advertises
# $STYLEPIPE_SLURM_GPUS fake GPUs (default 4; symlinks to /dev/null): Slurm
# schedules `--gpus` requests against them, nothing is computed on them.
# $STYLEPIPE_SLURM_NODES (default 1) nodes: more than one start one slurmd per
# node on this host (`slurmd -N <node>`, node<i> listening on port
# $STYLEPIPE_SLURMD_PORT + i - 1, each with all of this host's CPUs and memory),
# which Debian's Slurm is built for (--enable-multiple-slurmd): multi-node jobs
# (`srun --nodes=2`) run for real, every "node" on the same machine and filesystem.
# No DNS knows those node names: export MASTER_ADDR=127.0.0.1 for Lightning's
# multi-node jobs (it looks up the first node's name otherwise).
# No accounting database: `sacct` does not work here, `squeue` does (see docs/slurm.md).
set -euo pipefail

DIR=${STYLEPIPE_SLURM_DIR:-${TMPDIR:-/tmp}/stylepipe-slurm}
GPUS=${STYLEPIPE_SLURM_GPUS:-4}
NODES=${STYLEPIPE_SLURM_NODES:-1}
SLURMD_PORT=${STYLEPIPE_SLURMD_PORT:-6818}
CONF=$DIR/etc/slurm.conf
PIDS=$DIR/pids              # pid files of the daemons this script started
ETC_LINK=/etc/slurm/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2

log() { echo "slurm-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

require_packages() {
    local missing=()
    for prog in munged slurmctld slurmd sinfo sbatch; do
        command -v "$prog" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
    done
    if ((${#missing[@]})); then
        log "missing programs: ${missing[*]}. Install them with:"
        log "  apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client"
        exit 2
    fi
    [ "$(id -u)" = 0 ] || die "run as root: slurmd must start jobs as their users"
}

# The slurmd pid files: one per node (slurmd-<node>) on a cluster of several.
slurmds() {
    if ((NODES > 1)); then for node in $(node_names); do echo "slurmd-$node"; done; else echo slurmd; fi
}

# NAME's pid (slurmd-<node>: a slurmd) recorded by us and still that program?
alive() {
    local name=$1 pidfile=$PIDS/$1.pid pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -d "/proc/$pid" ] && grep -q "${name%%-*}" "/proc/$pid/comm" 2>/dev/null
}

# One node: named after this host. Several: node1, node2, ...
node_names() {
    if ((NODES > 1)); then seq -f 'node%g' 1 "$NODES"; else hostname -s; fi
}

node_lines() {
    local hw=$1 i
    if ((NODES == 1)); then
        echo "NodeName=$(hostname -s) NodeAddr=127.0.0.1 $hw"
        return
    fi
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=node$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i - 1)) $hw"
    done
}

munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        alive munged || log "using the munged already running on $MUNGE_SOCKET"
        return
    fi
    [ -s /etc/munge/munge.key ] || { log "creating /etc/munge/munge.key"; mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do munge_works && break; sleep 0.1; done
    munge_works || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$PIDS/munged.pid"
}

write_config() {
    local node cpus mem gres_files slurmd_files=""
    # The node as `slurmd -C` sees it, reached at 127.0.0.1 whatever the hostname resolves to.
    node=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    mkdir -p "$DIR"/{etc,gpus,spool/ctld,spool/d,log,run} "$PIDS"
    gres_files=""
    for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$DIR/gpus/gpu$i"; done
    ((GPUS > 0)) && gres_files="$DIR/gpus/gpu[0-$((GPUS - 1))]"
    # several slurmds on one host: each its own pid file, spool and log (%n: its node name)
    ((NODES > 1)) && slurmd_files=-%n
    cat >"$CONF.new" <<EOF
# Written by scripts/slurm-cluster.sh: $( ((NODES > 1)) && echo "$NODES nodes" || echo "one node") on localhost, no accounting.
ClusterName=stylepipe
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# cred_expire also holds a requeued job back before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${STYLEPIPE_SLURM_CRED_EXPIRE:-30}
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d$slurmd_files
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd$slurmd_files.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd$slurmd_files.log
SlurmctldPort=${STYLEPIPE_SLURMCTLD_PORT:-6817}
SlurmdPort=$SLURMD_PORT
# No systemd/cgroups needed: plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Jobs share the node by cores and memory (without this each job takes the whole node).
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults: 60 s and 30 s), e.g. requeued ones.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
GresTypes=gpu
# Finished jobs stay visible to squeue for 5 minutes: status polling without accounting.
MinJobAge=300
KillWait=10
MailProg=/bin/true
# A job that can never fit (e.g. more CPUs than the node has) is refused at
# submission instead of pending forever.
EnforcePartLimits=ALL
ReturnToService=2
SlurmdTimeout=60
$(node_lines "CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN")
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/gres.conf.new" <<EOF
AutoDetect=off
EOF
    [ -n "$gres_files" ] && echo "Name=gpu File=$gres_files" >>"$DIR/etc/gres.conf.new"
    # A changed GPU count or node needs the daemons restarted.
    if ! cmp -s "$CONF.new" "$CONF" || ! cmp -s "$DIR/etc/gres.conf.new" "$DIR/etc/gres.conf"; then
        CONFIG_CHANGED=1
        mv "$CONF.new" "$CONF"
        mv "$DIR/etc/gres.conf.new" "$DIR/etc/gres.conf"
    else
        CONFIG_CHANGED=0
        rm -f "$CONF.new" "$DIR/etc/gres.conf.new"
    fi
    # Client commands (sinfo, sbatch, ...) read /etc/slurm/slurm.conf unless SLURM_CONF is
    # set: link ours there if the machine has no configuration of its own.
    if [ ! -e "$ETC_LINK" ] && [ ! -L "$ETC_LINK" ]; then
        mkdir -p "$(dirname "$ETC_LINK")"
        ln -s "$CONF" "$ETC_LINK"
        touch "$PIDS/etc-link"
    fi
}

stop_daemon() {
    local name=$1 pid
    alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
    pid=$(cat "$PIDS/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDS/$name.pid"
}

# start_daemon slurmctld | slurmd | slurmd-<node> (`slurmd -N <node>`, its pid file run/slurmd-<node>.pid)
start_daemon() {
    local name=$1 pidfile=$DIR/run/$1.pid
    alive "$name" && return
    rm -f "$pidfile"
    case $name in
        slurmd-*) slurmd -f "$CONF" -N "${name#slurmd-}" ;;
        *) "$name" -f "$CONF" ;;
    esac
    for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
    [ -s "$pidfile" ] || die "$name did not start; see $DIR/log/$name.log"
    cp "$pidfile" "$PIDS/$name.pid"
}

# The nodes' states, each once: "idle", "down idle", ...
node_states() { SLURM_CONF=$CONF sinfo -h -N -o '%T' 2>/dev/null | sort -u | paste -sd' '; }

# Every node can take jobs? Nodes that came up down or drained (a restart) are resumed.
nodes_ready() {
    local states=$1 state ready=1
    [ -n "$states" ] || return 1
    for state in $states; do
        case $state in
            idle | mixed | allocated) ;;
            down* | drain*) ready=0; SLURM_CONF=$CONF scontrol update nodename="$(node_names | paste -sd,)" state=resume 2>/dev/null || true ;;
            *) ready=0 ;;
        esac
    done
    ((ready))
}

# Several slurmds on one host need a Slurm built with --enable-multiple-slurmd.
check_multiple_slurmd() {
    ((NODES > 1)) || return 0
    local config=""
    for _ in $(seq 100); do config=$(SLURM_CONF=$CONF scontrol show config 2>/dev/null) && break; sleep 0.1; done
    [ -n "$config" ] || die "slurmctld does not answer; see $DIR/log/slurmctld.log"
    grep -Eq '^MULTIPLE_SLURMD += Yes' <<<"$config" ||
        die "this Slurm is not built with --enable-multiple-slurmd: it cannot run $NODES nodes on one host; use STYLEPIPE_SLURM_NODES=1"
}

up() {
    require_packages
    export PATH=$PATH:/usr/sbin
    mkdir -p "$PIDS"
    write_config
    if ((CONFIG_CHANGED)); then stop_slurmds; stop_daemon slurmctld; fi
    start_munge
    start_daemon slurmctld
    check_multiple_slurmd
    for name in $(slurmds); do start_daemon "$name"; done
    local state="" ready=0
    for _ in $(seq 300); do
        state=$(node_states)
        nodes_ready "$state" && { ready=1; break; }
        sleep 0.1
    done
    ((ready)) || die "nodes not ready (states: ${state:-none}); see $DIR/log/"
    log "up: node(s) $(node_names | paste -sd' ') $state with $GPUS GPUs each (config: $CONF)"
    [ "$(readlink "$ETC_LINK" 2>/dev/null)" = "$CONF" ] || log "export SLURM_CONF=$CONF   # before using sinfo/sbatch/snakemake"
}

# Every slurmd this script started, whatever the node count it started them with.
stop_slurmds() {
    local pidfile
    for pidfile in "$PIDS"/slurmd.pid "$PIDS"/slurmd-*.pid; do
        [ -e "$pidfile" ] && stop_daemon "$(basename "$pidfile" .pid)"
    done
    return 0
}

down() {
    export PATH=$PATH:/usr/sbin
    # Jobs first, so that nothing keeps running after its daemons are gone.
    if alive slurmctld; then SLURM_CONF=$CONF scancel --full --quiet --user="$(id -un)" 2>/dev/null || true; fi
    stop_slurmds
    stop_daemon slurmctld
    stop_daemon munged
    if [ -e "$PIDS/etc-link" ]; then
        [ "$(readlink "$ETC_LINK" 2>/dev/null)" = "$CONF" ] && rm -f "$ETC_LINK"
        rm -f "$PIDS/etc-link"
    fi
    log "down"
}

status() {
    local name rc=0
    for name in munged slurmctld $(slurmds); do
        if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
        elif [ "$name" = munged ] && munge_works; then echo "munged: running (not started by this script)"
        else echo "$name: stopped"; rc=1; fi
    done
    echo "config: $CONF"
    if ((rc == 0)); then SLURM_CONF=$CONF sinfo -N -o '%N %T %c %m %G' || rc=1; fi
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 64 ;;
esac
