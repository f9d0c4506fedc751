#!/bin/bash
# shellcheck disable=SC1091,SC2317  # setup lines source site files; on_signal runs from trap
# ris_dist phase 2: plain sbatch script (no submitit), generated from configs/cluster/example_gpu.yaml.
# Same resources and per-node command as: python launch/submit.py --phase 2 --profile configs/cluster/example_gpu.yaml
# Regenerate: python -m ris_dist.launch.plain --profile configs/cluster/example_gpu.yaml --out slurm
# Usage (from the repository root): RUN_NAME=myrun sbatch slurm/phase2.sh [key=value ...]
#SBATCH --job-name=ris-phase2
#SBATCH --account=myproject
#SBATCH --constraint='a100|h100'
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --gpus-per-node=8
#SBATCH --mem=480GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --time=1440
#SBATCH --signal=B:USR2@180
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

RUN_NAME="${RUN_NAME:-default}"
MAX_REQUEUES="${MAX_REQUEUES:-5}"
RUN_NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'
if [[ ! "$RUN_NAME" =~ $RUN_NAME_RE ]]; then
  echo "error: RUN_NAME=$RUN_NAME must match $RUN_NAME_RE" >&2; exit 2
fi
OVERRIDE_RE='^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=[^]$`;&|<>\\[:cntrl:]]*$'
for arg in "$@"; do
  if [[ ! "$arg" =~ $OVERRIDE_RE ]]; then echo "error: override $arg: expected dotted.key=value without shell metacharacters" >&2; exit 2; fi
done
if [[ ! "$MAX_REQUEUES" =~ ^[0-9]+$ ]]; then echo "error: MAX_REQUEUES must be a number" >&2; exit 2; fi

# environment (profile env and setup lines)
export NCCL_DEBUG=WARN
export OMP_NUM_THREADS=8
source .venv/bin/activate
PYTHON="${PYTHON:-python3}"

# one task per node; rank 0's host is the rendezvous, the port comes from the job id
MAIN_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MAIN_PORT=$((20000 + SLURM_JOB_ID % 20000))

preempted=0
on_signal() {
  if [ "$preempted" = 0 ]; then
    preempted=1
    echo "[launch] preemption/timeout signal: asking the trainer to save" >&2
    scancel --signal=USR1 "$SLURM_JOB_ID" || true
  fi
}
trap on_signal USR2 TERM

# the launcher ignores USR1/USR2 (the ranks install their own handlers); @NODE_RANK@ = SLURM_NODEID
# shellcheck disable=SC2016
srun --ntasks-per-node=1 --kill-on-bad-exit=0 bash -c 'trap "" USR1 USR2; a=(); for x in "$@"; do [ "$x" = @NODE_RANK@ ] && x="$SLURM_NODEID"; a+=("$x"); done; exec "${a[@]}"' ris-node \
  "$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_machines 2 --num_processes 16 --machine_rank @NODE_RANK@ --main_process_ip "$MAIN_IP" --main_process_port "$MAIN_PORT" -m ris_dist.train --config configs/full/phase2.yaml "run_name=$RUN_NAME" "$@" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
rc=0; wait "$pid" || rc=$?

if [ "$preempted" = 1 ] || [ "$rc" = 75 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
    echo "[launch] requeue $(( ${SLURM_RESTART_COUNT:-0} + 1 ))/$MAX_REQUEUES" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "error: preempted, $MAX_REQUEUES requeues used" >&2
  exit 75
fi
exit "$rc"
