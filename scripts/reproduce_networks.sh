#!/usr/bin/env bash
# Regenerates the paper's network figures (2b, 5, 6) at full size.
#
# Usage: scripts/reproduce_networks.sh [--dataset cifar10|fashion-mnist] [--data DIR] [flags]
#   scripts/reproduce_networks.sh --data ~/data/cifar-10-batches-bin      # CIFAR-10 (the configs' default)
#   scripts/reproduce_networks.sh --dataset fashion-mnist                 # Debian's dataset-fashion-mnist
#   scripts/reproduce_networks.sh --data DIR --backend wgpu               # on a GPU
#
# Each figure goes to results/figures/<fig>[-<dataset>]/ with its training runs in runs/.
# A killed figure, started again, reuses its finished jobs and resumes its training runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p noisegeom
bin="${CARGO_TARGET_DIR:-target}/release/noisegeom"
suffix=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[$i]}" == "--dataset" ]]; then suffix="-${args[$((i + 1))]}"; fi
done
for fig in fig2b fig5 fig6; do
  start=$(date +%s)
  out="results/figures/$fig$suffix"
  mkdir -p "$out"
  "$bin" figure "$fig" "$@" | tee "$out/$fig.txt.partial"
  mv "$out/$fig.txt.partial" "$out/$fig.txt"
  echo "$fig: $(( $(date +%s) - start )) s wall"
done
