#!/bin/bash
# ris_dist phase chain without submitit: one sbatch job per phase, linked by afterok
# (a phase whose gate fails exits non-zero, so later phases never start). Generated from configs/cluster/example_gpu.yaml.
# Usage (from the repository root): RUN_NAME=myrun bash slurm/chain.sh [FIRST [LAST]] [key=value ...]
set -euo pipefail
first=0; last=3
if [[ "${1:-}" =~ ^[0-9]$ ]]; then first=$1; shift; fi
if [[ "${1:-}" =~ ^[0-9]$ ]]; then last=$1; shift; fi
if [ "$first" -gt "$last" ] || [ "$last" -gt 3 ]; then echo "error: phases must satisfy 0 <= FIRST <= LAST <= 3" >&2; exit 2; fi
export RUN_NAME="${RUN_NAME:-default}"
RUN_NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'
if [[ ! "$RUN_NAME" =~ $RUN_NAME_RE ]]; then echo "error: RUN_NAME=$RUN_NAME must match $RUN_NAME_RE" >&2; exit 2; fi
if [ "$first" -gt 0 ]; then
  best="runs/$RUN_NAME/phase$((first - 1))/best/model.pt"
  if [ ! -f "$best" ]; then echo "error: phase $first needs $best (run phase $((first - 1)) with RUN_NAME=$RUN_NAME first)" >&2; exit 2; fi
fi
prev=""
for phase in $(seq "$first" "$last"); do
  dep=()
  if [ -n "$prev" ]; then dep=(--dependency="afterok:$prev" --kill-on-invalid-dep=yes); fi
  prev="$(sbatch --parsable "${dep[@]}" "slurm/phase$phase.sh" "$@")"
  prev="${prev%%;*}"
  echo "phase$phase job $prev"
done
