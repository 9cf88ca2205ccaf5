#!/usr/bin/env bash
# On a machine with a GPU: build with wgpu, list the adapters, run the wgpu-vs-flex parity tests,
# then time training of the presentation's Swiss-roll model at batch 1024 to 65,536 on the GPU
# (wgpu), on this machine's CPU (flex) and, where PyTorch with CUDA is installed, through PyTorch
# on the GPU; then sampling 100,000 points through T = 1000 on the GPU and on the CPU. Prints a
# Markdown table for BENCHMARKS.md's GPU section. Run from the repository root:
#   bash scripts/gpu-check.sh            # about 5 minutes once built
#   QUICK=1 bash scripts/gpu-check.sh    # a tenth of the steps and points (a smoke test)
# PYTHON=/path/to/python picks the interpreter that has torch (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
scale() { if [ -n "${QUICK:-}" ]; then echo $(( ($1 + 9) / 10 )); else echo "$1"; fi; }

echo "== build (release, features wgpu)"
cargo build --release -p diffusion-cli --features wgpu
B="${CARGO_TARGET_DIR:-target}/release/diffusion"
"$B" devices

echo "== parity tests (wgpu against flex)"
cargo test --release -p diffusion-cli --features wgpu --test wgpu_parity -- --test-threads=1 --nocapture 2>&1 \
  | grep -E "parity:|wgpu:|test result" || true

roll=configs/swiss_roll_presentation.toml
long="$(mktemp -d)/swiss_roll_t1000.toml"
sed 's/^steps = 100$/steps = 1000/' "$roll" >"$long"
PY="${PYTHON:-python3}"
torch_cuda=no
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  torch_cuda=yes
fi
field() { grep -o "\"$1\":[^,}]*" | head -1 | cut -d: -f2- | tr -d ' "'; }
# One cell: the command's JSON line, reduced to the metric (or "failed").
cell() {
  local metric=$1; shift
  local out
  if out=$("$@" 2>/dev/null | tail -1) && [ -n "$out" ]; then
    printf '%.0f' "$(echo "$out" | field "$metric")"
  else
    echo failed
  fi
}
gpu_name=$("$B" bench --workload sample --config "$roll" -n 10 --backend wgpu 2>/dev/null \
  | sed -n 's/.*"device":"\([^"]*\)".*/\1/p' || true)
echo
echo "GPU: ${gpu_name:-none found}; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
echo
echo "| workload | size | wgpu (GPU) | flex (CPU) | PyTorch CUDA | wgpu / flex |"
echo "|---|---|---|---|---|---|"
for batch in 1024 4096 16384 65536; do
  steps=$(scale $(( 400 * 1024 / batch > 20 ? 400 * 1024 / batch : 20 )))
  args=(bench --workload train --config "$roll" --batch-size "$batch" --steps "$steps")
  g=$(cell examples_per_s "$B" "${args[@]}" --backend wgpu)
  c=$(cell examples_per_s "$B" "${args[@]}" --backend flex)
  t="–"
  if [ "$torch_cuda" = yes ]; then
    t=$(cell examples_per_s "$PY" bench/pytorch/bench.py --workload train --model roll \
      --batch-size "$batch" --steps "$steps" --device cuda)
  fi
  ratio=$(awk -v g="$g" -v c="$c" 'BEGIN { if (g + 0 > 0 && c + 0 > 0) printf "%.2fx", g / c; else print "–" }')
  echo "| train Swiss roll, examples/s | batch $batch | $g | $c | $t | $ratio |"
done
n=$(scale 100000)
g=$(cell point_steps_per_s "$B" bench --workload sample --config "$long" -n "$n" --backend wgpu)
c=$(cell point_steps_per_s "$B" bench --workload sample --config "$long" -n "$n" --backend flex)
ratio=$(awk -v g="$g" -v c="$c" 'BEGIN { if (g + 0 > 0 && c + 0 > 0) printf "%.2fx", g / c; else print "–" }')
echo "| sample Swiss roll (T = 1000), point-steps/s | n = $n | $g | $c | – | $ratio |"
