#!/usr/bin/env bash
# Submit a figure sweep to Slurm: an N-task array of sweep.sbatch, then merge.sbatch once
# every task has succeeded.
#
#   scripts/slurm/submit.sh CONFIG N [--gpu] [extra sbatch flags…]
#
# OUT, QUICK, RUNS, PRECISION and NOISEGEOM pass through from the environment. --gpu asks
# each task for one GPU and runs it with --backend wgpu.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG N [--gpu] [sbatch flags…]" >&2
  exit 2
fi
config=$1 shards=$2
shift 2
case "$shards" in '' | *[!0-9]* | 0) echo "$0: N must be a positive integer, got '$shards'" >&2; exit 2 ;; esac
[ -f "$config" ] || { echo "$0: no config at $config" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
backend=cpu gres=()
if [ "${1:-}" = --gpu ]; then
  backend=wgpu gres=(--gres=gpu:1)
  shift
fi
array=$(sbatch --parsable --array="0-$((shards - 1))" "${gres[@]}" "$@" \
  --export="ALL,CONFIG=$config,SHARDS=$shards,BACKEND=$backend" "$here/sweep.sbatch")
array=${array%%;*}
merge=$(sbatch --parsable --dependency="afterok:$array" "$@" \
  --export="ALL,CONFIG=$config" "$here/merge.sbatch")
echo "submitted: array $array ($shards tasks, backend $backend), merge ${merge%%;*} after it"
