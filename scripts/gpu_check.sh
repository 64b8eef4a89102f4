#!/usr/bin/env bash
# The GPU check: a prebuilt noisegeom binary (no compiler needed) against the CPU on this
# machine's wgpu adapter. It prints the adapter; trains the quickstart's first steps on wgpu
# and on cpu and compares every logged loss; measures μ, λ_max(G) and λ_max(H) of the CPU
# run's checkpoint on both backends and compares them; runs the benchmark on wgpu (against
# PyTorch CUDA through scripts/compare_bench.sh when torch.cuda is available); and writes
# all of it to results/bench/gpu-<date>.md (or --out). Exits 1 when a comparison fails, 0
# when all pass, 0 with a SKIPPED line when there is no wgpu adapter.
#
#   scripts/gpu_check.sh [--bin PATH] [--tiny] [--out FILE]
#
# --tiny runs the same steps at tiny sizes (the software Vulkan of CI, lavapipe, finishes
# them in a few minutes) and writes to a temporary file unless --out is given. On one GPU the
# full check is sized to finish in under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/noisegeom"
tiny=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "gpu_check: unknown argument $1 (use --bin PATH, --tiny, --out FILE)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "gpu_check: no noisegeom binary at $bin; build it (cargo build --release) or pass --bin PATH" >&2; exit 2; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export NOISEGEOM_LOG="${NOISEGEOM_LOG:-warn}"
adapter=$("$bin" backends | grep '^wgpu:' || true)
if ! printf '%s' "$adapter" | grep -q 'adapter'; then
  echo "SKIPPED gpu_check: no wgpu adapter ($adapter)"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$out" ]; then
  if [ "$tiny" = 1 ]; then out="$work/gpu-check.md"; else out="results/bench/gpu-$(date -u +%Y-%m-%d).md"; fi
fi
mkdir -p "$(dirname "$out")"

if [ "$tiny" = 1 ]; then
  sets=(--set data.n_train=256 --set data.n_test=32 --set data.image_size=8 --set train.steps=6)
  probe=32
  bench=(--backends wgpu,cpu --repeats 1 --probe-size 32 --workloads hv-fnn)
else
  sets=(--set train.steps=50)
  probe=256
fi
common=(--config configs/quickstart.toml "${sets[@]}" --set train.log_every=1 --set train.eval_every=1000 --set probe.enabled=false)
start=$(date +%s)
report() { printf '%s\n' "$*" | tee -a "$out"; }
: > "$out"
report "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
report ""
report "- binary: \`$bin\` ($("$bin" --version))"
report "- adapter: ${adapter#wgpu: }"
report "- mode: $([ "$tiny" = 1 ] && echo tiny || echo full)"
report ""

"$bin" train "${common[@]}" --backend cpu --out "$work/cpu" >/dev/null
"$bin" train "${common[@]}" --backend wgpu --out "$work/wgpu" >/dev/null
failed=0
losses=$(python3 - "$work/cpu/metrics.jsonl" "$work/wgpu/metrics.jsonl" <<'PY'
import json, sys
def steps(p):
    return [json.loads(l)["loss"] for l in open(p) if '"kind":"step"' in l]
a, b = steps(sys.argv[1]), steps(sys.argv[2])
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
ok = len(a) == len(b) > 0 and worst <= 1e-3
print(f"{'PASS' if ok else 'FAIL'} | {len(a)} logged steps, largest relative difference {worst:.2e} (bound 1e-3)")
PY
)
report "| check | result |"
report "|---|---|"
report "| training losses, wgpu vs cpu | $losses |"
case "$losses" in PASS*) ;; *) failed=1 ;; esac

for b in cpu wgpu; do
  "$bin" measure --run "$work/cpu" --backend "$b" --probe-size "$probe" --k 3 --lanczos-iters 20 \
    --what mu,spectrum --out "$work/measure-$b.json" >/dev/null
done
geometry=$(python3 - "$work/measure-cpu.json" "$work/measure-wgpu.json" <<'PY'
import json, sys
def q(p):
    m = json.load(open(p))["measurement"]
    return {"mu": m["loss_alignment"]["mu"], "lambda_max_g": m["curvature"]["lambda_max_g"],
            "lambda_max_h": m["curvature"]["lambda_max_h"]}
a, b = q(sys.argv[1]), q(sys.argv[2])
rel = {k: abs(a[k] - b[k]) / abs(a[k]) for k in a}
ok = all(r <= 1e-4 for r in rel.values())
print(f"{'PASS' if ok else 'FAIL'} | " + ", ".join(f"{k} {a[k]:.6g} vs {b[k]:.6g} (rel {rel[k]:.1e})" for k in a) + " (bound 1e-4)")
PY
)
report "| μ, λ_max(G), λ_max(H) of one checkpoint, wgpu vs cpu | $geometry |"
case "$geometry" in PASS*) ;; *) failed=1 ;; esac
report ""

if [ "$tiny" = 1 ]; then
  report "Benchmark (\`noisegeom bench ${bench[*]}\`):"
  report ""
  report '```text'
  "$bin" bench "${bench[@]}" 2>/dev/null | tee -a "$out"
  report '```'
else
  report "Benchmark (\`scripts/compare_bench.sh --backend wgpu --rounds 1 --repeats 3\`; against PyTorch CUDA when available):"
  report ""
  scripts/compare_bench.sh --backend wgpu --rounds 1 --repeats 3 --bin "$bin" >/dev/null
  cat results/bench/compare-wgpu.md | tee -a "$out"
fi
report ""
report "Took $(( $(date +%s) - start )) s; $([ "$failed" = 0 ] && echo 'every check passed' || echo 'a check FAILED')."
echo "gpu_check: report in $out"
exit "$failed"
