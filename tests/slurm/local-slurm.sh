#!/usr/bin/env bash
# A single-node Slurm on localhost from Debian's packages (munge, slurmctld,
# slurmd, slurm-client; .ci/slurm-deps installs them), for tests and for trying
# the Slurm profile by hand. Everything lives under DIR; nothing system-wide is
# touched (own munged socket, own ports, own state, pid and log files).
#
#   tests/slurm/local-slurm.sh start DIR   # prints 'export SLURM_CONF=DIR/etc/slurm.conf'
#   export SLURM_CONF=DIR/etc/slurm.conf   # for sbatch, squeue, sinfo, snakemake
#   tests/slurm/local-slurm.sh stop DIR    # cancels jobs, stops the three daemons
#
# start waits (bounded) until the node is idle and exits non-zero, printing the
# daemons' logs, when it does not get there.
#
# Jobs see this cluster's configuration at the standard path: slurmd runs in a
# private mount namespace (unshare) where DIR/etc is bind-mounted over
# /etc/slurm, and its jobs inherit that namespace. This matters because the
# Slurm executor's job step removes SLURM_* variables (SLURM_CONF included)
# before its inner `srun`, which then reads /etc/slurm/slurm.conf as on a real
# cluster. Outside the namespace /etc/slurm is untouched (created empty if
# missing, as a mount point).
#
# stop only signals the processes whose pid files are under DIR and whose
# command line names DIR.
#
# Settings (environment): LOCAL_SLURM_CPU_PARTITION (cpu),
# LOCAL_SLURM_GPU_PARTITION (gpu), LOCAL_SLURM_MIN_JOB_AGE (3600 s),
# LOCAL_SLURM_MEMORY_MB (65536), LOCAL_SLURM_START_TIMEOUT (60 s).
# Needs root (slurmd launches jobs as their users).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/slurm.conf.in"

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD="$1"
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"
CONF="$DIR/etc/slurm.conf"
export SLURM_CONF="$CONF"

need() {
    local missing=()
    for exe in munged mungekey slurmctld slurmd sinfo scontrol scancel unshare mount; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        echo "local-slurm: missing ${missing[*]} (run .ci/slurm-deps)" >&2
        exit 3
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# pid from a pid file, only if that process is alive and its command line names DIR
our_pid() {
    local f="$1" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$DIR" || return 1
    echo "$pid"
}

dump_logs() {
    for f in "$DIR/munge/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [ -f "$f" ] && { echo "----- $f (last 30 lines)"; tail -n 30 "$f"; }
    done >&2
}

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1; }

start() {
    need
    if our_pid "$DIR/run/slurmctld.pid" >/dev/null; then
        echo "local-slurm: already running under $DIR" >&2
        exit 1
    fi
    HOST="$(hostname -s)"
    local cpus mem gpus ctld_port slurmd_port timeout deadline
    cpus="${LOCAL_SLURM_CPUS:-$(nproc)}"
    gpus="${LOCAL_SLURM_GPUS:-2}"
    mem="${LOCAL_SLURM_MEMORY_MB:-65536}"
    timeout="${LOCAL_SLURM_START_TIMEOUT:-60}"
    ctld_port="$(free_port)"
    slurmd_port="$(free_port)"
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port="$(free_port)"; done

    rm -rf "$DIR/etc" "$DIR/dev" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$DIR/munge"
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$DIR/munge"
    chmod 700 "$DIR/munge"
    : >"$DIR/etc/plugstack.conf"
    # Stand-in GPUs, so that jobs asking for GPUs (sbatch --gpus) get scheduled:
    # no autodetection, and as device files copies of /dev/null (character
    # device 1,3; plain files where mknod is not allowed, which slurmd accepts
    # with a complaint in its log). Nothing runs on them.
    mkdir -p "$DIR/dev"
    local i
    echo "AutoDetect=off" >"$DIR/etc/gres.conf"
    for i in $(seq 0 $((gpus - 1))); do
        mknod "$DIR/dev/fakegpu$i" c 1 3 2>/dev/null || : >"$DIR/dev/fakegpu$i"
        echo "NodeName=$HOST Name=gpu File=$DIR/dev/fakegpu$i" >>"$DIR/etc/gres.conf"
    done

    sed -e "s|@HOST@|$HOST|g" -e "s|@DIR@|$DIR|g" \
        -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" \
        -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY_MB@|$mem|g" -e "s|@GPUS@|$gpus|g" \
        -e "s|@MIN_JOB_AGE@|${LOCAL_SLURM_MIN_JOB_AGE:-3600}|g" \
        -e "s|@CPU_PARTITION@|${LOCAL_SLURM_CPU_PARTITION:-cpu}|g" \
        -e "s|@GPU_PARTITION@|${LOCAL_SLURM_GPU_PARTITION:-gpu}|g" \
        "$TEMPLATE" >"$CONF"

    # MUNGE: a fresh key and a daemon on our own socket.
    mungekey --create --keyfile="$DIR/munge/munge.key" --force
    chmod 600 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.sock" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || { dump_logs; exit 1; }

    # -c: start from a clean state (no jobs or node state from earlier runs)
    slurmctld -c -f "$CONF" || { dump_logs; exit 1; }
    # slurmd (and so every job) in its own mount namespace, DIR/etc over /etc/slurm
    mkdir -p /etc/slurm
    unshare --mount --propagation private \
        sh -c 'mount --bind "$1" /etc/slurm && exec slurmd -c -f "$2"' sh "$DIR/etc" "$CONF" \
        || { dump_logs; exit 1; }

    deadline=$((SECONDS + timeout))
    local state=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(node_state || true)"
        case "$state" in
            idle) break ;;
            down*|drain*|fail*|inval*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    if [ "$state" != "idle" ]; then
        echo "local-slurm: node $HOST not idle after ${timeout}s (state '${state:-unknown}')" >&2
        sinfo -N -l >&2 || true
        dump_logs
        exit 1
    fi
    echo "export SLURM_CONF=$CONF"
}

# TERM, then (after a bounded wait) KILL, one pid at a time
stop_pid() {
    local name="$1" pid="$2" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    echo "local-slurm: $name ($pid) ignored TERM, killing" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local pid
    if our_pid "$DIR/run/slurmctld.pid" >/dev/null && command -v scancel >/dev/null 2>&1; then
        timeout 20 scancel --full --user="$(id -un)" >/dev/null 2>&1 || true
        sleep 1
    fi
    if pid="$(our_pid "$DIR/run/slurmd.pid")"; then stop_pid slurmd "$pid"; fi
    if pid="$(our_pid "$DIR/run/slurmctld.pid")"; then stop_pid slurmctld "$pid"; fi
    if pid="$(our_pid "$DIR/munge/munged.pid")"; then stop_pid munged "$pid"; fi
    rm -f "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"
}

status() {
    local name f pid rc=0
    for name in munged slurmctld slurmd; do
        case "$name" in munged) f="$DIR/munge/munged.pid" ;; *) f="$DIR/run/$name.pid" ;; esac
        if pid="$(our_pid "$f")"; then echo "$name: running ($pid)"; else echo "$name: stopped"; rc=1; fi
    done
    return "$rc"
}

case "$CMD" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
