#!/usr/bin/env bash
# Runs `noisegeom bench` and scripts/bench_pytorch.py on the same machine, one after the
# other (identical workloads, f32, 2 threads on CPU), and prints the ratio table.
# Usage: scripts/compare_bench.sh [--backend cpu|wgpu] [--repeats N]
# Writes results/bench/noisegeom-<backend>.json, results/bench/pytorch-<device>.json and
# results/bench/compare-<backend>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=cpu
repeats=5
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    *) echo "compare_bench: unknown argument $1 (use --backend, --repeats)" >&2; exit 2 ;;
  esac
done
device=cpu
[ "$backend" = wgpu ] && device=cuda
mkdir -p results/bench
cargo build --release -p noisegeom
bin="${CARGO_TARGET_DIR:-target}/release/noisegeom"
ours="results/bench/noisegeom-$backend.json"
theirs="results/bench/pytorch-$device.json"
"$bin" bench --backends "$backend" --repeats "$repeats" --json "$ours"
if ! python3 -c "import torch" 2>/dev/null; then
  echo "compare_bench: PyTorch is not installed (pip install torch); only noisegeom's side ran" >&2
  exit 0
fi
python3 scripts/bench_pytorch.py --threads 2 --repeats "$repeats" --device "$device" --json "$theirs" >/dev/null
python3 - "$ours" "$theirs" "results/bench/compare-$backend.md" <<'PY'
import json, sys
ours = {t["workload"]: t for t in json.load(open(sys.argv[1]))["timings"]}
doc = json.load(open(sys.argv[2]))
theirs = {t["workload"]: t for t in doc["timings"]}
# Training is a throughput (higher is better): ratio = ours/theirs samples/s, target >= 1.
# Geometry is a time (lower is better): ratio = ours/theirs seconds, target <= 1.
rows = ["| workload | noisegeom (median s) | PyTorch (median s) | ratio | target | met | peak MB (ours / PyTorch) |",
        "|---|---|---|---|---|---|---|"]
for w, t in ours.items():
    if w not in theirs:
        continue
    p = theirs[w]
    if w.startswith("train-"):
        ratio, target, met = p["median_s"] / t["median_s"], "throughput ≥ 1.0", p["median_s"] >= t["median_s"]
    else:
        ratio, target, met = t["median_s"] / p["median_s"], "time ≤ 1.0", t["median_s"] <= p["median_s"]
    if w == "sgemm":
        target, met = "(context: GFLOP/s %.0f vs %.0f)" % (t["throughput"], p["throughput"]), ""
    mem = lambda x: "-" if x.get("peak_rss_mb") is None else "%.0f" % x["peak_rss_mb"]
    rows.append("| %s | %.4f | %.4f | %.2f | %s | %s | %s / %s |" % (
        w, t["median_s"], p["median_s"], ratio, target, {True: "yes", False: "**no**", "": ""}[met], mem(t), mem(p)))
text = "\n".join(rows) + "\n\nPyTorch: %s\n" % json.dumps(doc["env"])
mu, mm = ours.get("mu-fnn"), ours.get("sgemm")
if mu and mm and mu["unit"].startswith("GFLOP/s"):
    gflop = mu["throughput"] * mu["median_s"]
    text += ("\nmu-fnn: %.0f GFLOP in its Gram products, %.0f GFLOP/s over the workload's median "
             "time; at sgemm's rate (%.0f ours, %.0f PyTorch's) the products alone take %.2f s, %.2f s\n"
             % (gflop, mu["throughput"], mm["throughput"], theirs.get("sgemm", mm)["throughput"],
                gflop / mm["throughput"], gflop / theirs.get("sgemm", mm)["throughput"]))
open(sys.argv[3], "w").write(text)
print(text)
PY
