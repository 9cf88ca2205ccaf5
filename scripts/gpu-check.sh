#!/usr/bin/env bash
# On a machine with a real GPU: build with wgpu, run the wgpu-vs-flex parity tests, time a short
# training run on each backend, and print a short table. Run from the repository root:
#   bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

echo "== build (release, features wgpu)"
cargo build --release -p diffusion-cli --features wgpu --quiet

echo "== parity tests (wgpu against flex)"
cargo test --release -p diffusion-cli --features wgpu --test wgpu_parity -- --test-threads=1 --nocapture 2>&1 \
  | grep -E "parity:|wgpu:|test result" || true

B="${CARGO_TARGET_DIR:-target}/release/diffusion"
out="$(mktemp -d)"
printf '\n%-8s %-10s %-8s %-12s %s\n' backend batch steps steps/s "K (bits)"
for backend in flex wgpu; do
  for batch in 1024 4096; do
    "$B" train --config configs/swiss_roll.toml --backend "$backend" --steps 500 \
      --batch-size "$batch" --out "$out/$backend-$batch" --eval-n 2000 >"$out/log" 2>&1 || {
      echo "$backend batch $batch failed:"; tail -3 "$out/log"; continue; }
    rate=$(grep -o '"steps_per_s": [0-9.]*' "$out/$backend-$batch/summary.json" | awk '{print $2}')
    k=$(grep -o '"k_bits": [-0-9.]*' "$out/$backend-$batch/evaluation.json" | awk '{print $2}')
    printf '%-8s %-10s %-8s %-12.1f %.4f\n' "$backend" "$batch" 500 "$rate" "$k"
  done
done
