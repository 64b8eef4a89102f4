#!/usr/bin/env bash
# Regenerates the paper's synthetic figures (1, 2a, 3, 4) at full size into results/figures/.
# Usage: scripts/reproduce_synthetic.sh [extra flags for `noisegeom figure`, e.g. --backend ndarray]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p noisegeom
bin="${CARGO_TARGET_DIR:-target}/release/noisegeom"
for fig in fig1 fig2a fig3 fig4; do
  start=$(date +%s)
  "$bin" figure "$fig" "$@" | tee "results/figures/$fig.txt.partial"
  mv "results/figures/$fig.txt.partial" "results/figures/$fig.txt"
  echo "$fig: $(( $(date +%s) - start )) s wall"
done
