#!/usr/bin/env bash
# Runs `noisegeom bench` and scripts/bench_pytorch.py on the same machine (identical
# workloads, f32, 2 threads on CPU), interleaved: workload by workload, one side and then
# the other, over --rounds rounds with the order swapped each round, so that a slow spell
# of the machine falls on both sides. Per side and workload the reported time is the
# median of the rounds' medians (each round: a warm-up, then --repeats timed calls, in a
# fresh process, so each peak-memory figure is that workload's own). Prints the ratio table.
# Usage: scripts/compare_bench.sh [--backend cpu|wgpu] [--repeats N] [--rounds R] [--bin PATH]
# (--bin: a prebuilt noisegeom binary; without it the script builds one with cargo.)
# Writes results/bench/noisegeom-<backend>.json, results/bench/pytorch-<device>.json (every
# round's timings) and results/bench/compare-<backend>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
args="$*"
backend=cpu
repeats=5
rounds=3
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "compare_bench: unknown argument $1 (use --backend, --repeats, --rounds, --bin)" >&2; exit 2 ;;
  esac
done
device=cpu
[ "$backend" = wgpu ] && device=cuda
mkdir -p results/bench
if [ -z "$bin" ]; then
  cargo build --release -p noisegeom
  bin="${CARGO_TARGET_DIR:-target}/release/noisegeom"
fi
ours="results/bench/noisegeom-$backend.json"
theirs="results/bench/pytorch-$device.json"
# Workloads both sides run, and ours alone (the alternative routes to Jv and Hv).
shared="train-fnn train-cnn gv-fnn hv-fnn lanczos-fnn gram-mu-fnn mu-fnn alpha-fnn sgemm"
alone="jv-fnn jv-double-vjp-fnn hv-double-backward-fnn"
have_torch=1
python3 -c "import torch" 2>/dev/null || have_torch=0
[ "$have_torch" = 1 ] || echo "compare_bench: PyTorch is not installed (pip install torch); only noisegeom's side runs" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run_ours() { "$bin" bench --backends "$backend" --repeats "$repeats" --workloads "$1" --json "$tmp/ours-$1-$2.json" >/dev/null; }
run_theirs() { python3 scripts/bench_pytorch.py --threads 2 --repeats "$repeats" --device "$device" --workloads "$1" --json "$tmp/theirs-$1-$2.json" >/dev/null 2>&1; }
for r in $(seq 1 "$rounds"); do
  for w in $shared; do
    if [ "$have_torch" = 0 ]; then
      run_ours "$w" "$r"
    elif [ $((r % 2)) = 1 ]; then
      run_ours "$w" "$r"; run_theirs "$w" "$r"
    else
      run_theirs "$w" "$r"; run_ours "$w" "$r"
    fi
  done
  for w in $alone; do run_ours "$w" "$r"; done
done
# One document per side: the first run's environment, every round's timings.
python3 - "$tmp" "$ours" "$theirs" "$have_torch" "$args" "$shared" "$alone" <<'PY'
import glob, json, os, sys
tmp, ours, theirs, have_torch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
for side, out in [("ours", ours)] + ([("theirs", theirs)] if have_torch else []):
    docs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(tmp, side + "-*.json")))]
    env = dict(docs[0]["env"])
    env["command"] = "scripts/compare_bench.sh " + sys.argv[5]
    # Workloads in the order they run, rounds in order.
    order = (sys.argv[6] + " " + sys.argv[7]).split()
    timings = [t for d in docs for t in d["timings"]]
    timings.sort(key=lambda t: order.index(t["workload"]))
    doc = {"env": env, "timings": timings}
    json.dump(doc, open(out, "w"), indent=2)
PY
[ "$have_torch" = 1 ] || exit 0
python3 - "$ours" "$theirs" "results/bench/compare-$backend.md" <<'PY'
import json, statistics, sys

def by_workload(doc):
    """Per workload: the median of the rounds' medians, its throughput, the largest peak."""
    rounds = {}
    for t in doc["timings"]:
        rounds.setdefault(t["workload"], []).append(t)
    out = {}
    for w, ts in rounds.items():
        med = statistics.median(t["median_s"] for t in ts)
        work = ts[0]["throughput"] * ts[0]["median_s"]
        peaks = [t["peak_rss_mb"] for t in ts if t.get("peak_rss_mb") is not None]
        out[w] = {"median_s": med, "throughput": work / med, "unit": ts[0]["unit"],
                  "rounds": [t["median_s"] for t in ts], "peak_rss_mb": max(peaks) if peaks else None}
    return out

ours = by_workload(json.load(open(sys.argv[1])))
doc = json.load(open(sys.argv[2]))
theirs = by_workload(doc)
# Training is a throughput (higher is better): ratio = ours/theirs samples/s, target >= 1.
# Geometry is a time (lower is better): ratio = ours/theirs seconds, target <= 1.
rows = ["| workload | noisegeom (median s) | PyTorch (median s) | ratio | target | met | peak MB (ours / PyTorch) | rounds' ratios |",
        "|---|---|---|---|---|---|---|---|"]
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
    # Each round's ratio, from the two sides' medians in that round (run back to back).
    per_round = [(b / a if w.startswith("train-") else a / b) for a, b in zip(t["rounds"], p["rounds"])]
    rows.append("| %s | %.4f | %.4f | %.2f | %s | %s | %s / %s | %s |" % (
        w, t["median_s"], p["median_s"], ratio, target, {True: "yes", False: "**no**", "": ""}[met], mem(t), mem(p),
        ", ".join("%.2f" % x for x in per_round)))
text = "\n".join(rows) + "\n\nPyTorch: %s; %d rounds, interleaved\n" % (
    json.dumps(doc["env"]), len(next(iter(ours.values()))["rounds"]))
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
