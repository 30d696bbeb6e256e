#!/usr/bin/env bash
# Fine-tuning recovers what post-training quantization loses: mnist1d-cnn at size=3bit.
# Writes benchmarks/results/finetune_mnist1d/uniform{.json,_finetune.json,_eval.json}.
# About 3 minutes on 2 shared CPU cores once the float model is cached.
set -euo pipefail
out=${1:-benchmarks/results/finetune_mnist1d}
mkdir -p "$out"
nice bitsearch search --task mnist1d-cnn --searcher uniform --budget size=3bit --out "$out/uniform.json"
nice bitsearch finetune "$out/uniform.json" --task mnist1d-cnn --epochs 5 --threads 1 \
    --out "$out/uniform.pt" --json > "$out/uniform_finetune.json"
nice bitsearch eval "$out/uniform.json" --task mnist1d-cnn --model "$out/uniform.pt" --json > "$out/uniform_eval.json"
rm -f "$out/uniform.pt.ckpt"
