#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing sweep.py's cluster path (tests/test_slurm.py):
#
#   scripts/slurm_single_node.sh start    # install where missing, configure, start munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/sae-harness-slurm/slurm.conf   # what start prints: sbatch, squeue, ... use it
#   scripts/slurm_single_node.sh status   # exit 0 when the node answers
#   scripts/slurm_single_node.sh stop     # cancel its jobs, stop exactly the daemons start started
#
# Everything lives in one folder ($SAE_SLURM_DIR, default /tmp/sae-harness-slurm): the config, a munge key
# and socket of its own, the daemons' pid files, logs and spool. It touches no system configuration
# (/etc/slurm, /etc/munge, the system munged) and uses its own ports, so it stands beside a real
# installation. One node, named localhost, with this machine's CPUs and memory; a job's time limit
# and the signal before it (which submitit turns into a checkpoint and a requeue) are honoured.
# Needs root (the daemons run as root) and, where SLURM is not installed, apt-get; exit status 3 says
# that SLURM cannot be had here (tests/test_slurm.py then skips), any other non-zero a fault.
set -euo pipefail

dir="${SAE_SLURM_DIR:-/tmp/sae-harness-slurm}"
conf="$dir/slurm.conf"
daemons=(slurmd slurmctld munged) # stopped in this order, started in the reverse

say() { echo "slurm_single_node: $*"; }
fail() {
	echo "slurm_single_node: $*" >&2
	exit 1
}

# The pid in $dir/<daemon>.pid when that process is still the daemon this script started.
ours() {
	local pid
	pid="$(cat "$dir/$1.pid" 2>/dev/null)" || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
}

up() { SLURM_CONF="$conf" sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

# SLURM cannot be had here (not root, no package manager, the install failed): exit status 3.
cannot() {
	echo "slurm_single_node: $*" >&2
	exit 3
}

install() {
	command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null && return
	command -v apt-get >/dev/null || cannot "SLURM is not installed and there is no apt-get to install it (Debian's slurmctld slurmd slurm-client munge)"
	say "installing slurmctld slurmd slurm-client munge"
	local log="$dir/log/apt.log"
	mkdir -p "$dir/log"
	apt-get update -q >"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >>"$log" 2>&1 ||
		cannot "could not install SLURM with apt-get: $(tail -1 "$log")"
}

configure() {
	mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log"
	chmod 755 "$dir"
	if [[ ! -s "$dir/munge.key" ]]; then
		head -c 1024 /dev/urandom >"$dir/munge.key"
		chmod 400 "$dir/munge.key"
	fi
	local cpus mem_mb
	cpus="$(nproc)"
	mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)" # leave the system a tenth
	cat >"$conf" <<EOF
# written by scripts/slurm_single_node.sh: a test cluster of one node
ClusterName=sae-harness-test
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s; a job started
# sooner, as by `scontrol update StartTime=now`, is killed: "Job credential revoked")
AuthInfo=socket=$dir/munge.socket,cred_expire=10
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
	[[ $EUID -eq 0 ]] || cannot "needs root (the SLURM daemons run as root); not started"
	if ours slurmctld >/dev/null && ours slurmd >/dev/null && up; then
		say "already running; export SLURM_CONF=$conf"
		return
	fi
	stop >/dev/null # a half-started cluster of ours: start afresh
	install
	configure
	munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
		--log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed" --force
	SLURM_CONF="$conf" slurmctld -i # -i: forget the state of an earlier cluster in this folder
	SLURM_CONF="$conf" slurmd -N localhost
	local waited=0
	until up; do
		((waited++ < 60)) || fail "the node did not come up within 60 s; see $dir/log"
		sleep 1
	done
	say "running (1 node, $(nproc) CPUs); export SLURM_CONF=$conf"
}

stop() {
	if ours slurmctld >/dev/null; then # its jobs first, so that no job step outlives the cluster
		SLURM_CONF="$conf" scancel --partition=debug 2>/dev/null || true
		local waited=0
		while [[ -n "$(SLURM_CONF="$conf" squeue -h 2>/dev/null)" ]] && ((waited++ < 60)); do sleep 1; done
	fi
	local name pid
	for name in "${daemons[@]}"; do
		if pid="$(ours "$name")"; then
			kill "$pid"
			local waited=0
			while kill -0 "$pid" 2>/dev/null && ((waited++ < 30)); do sleep 1; done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
			say "stopped $name ($pid)"
		fi
		rm -f "$dir/$name.pid"
	done
}

status() {
	if ours slurmctld >/dev/null && ours slurmd >/dev/null && up; then
		say "running; export SLURM_CONF=$conf"
	else
		say "not running"
		return 1
	fi
}

case "${1:-}" in
start | stop | status) "$1" ;;
*) fail "usage: $0 start|stop|status" ;;
esac
