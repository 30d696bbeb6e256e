#!/usr/bin/env bash
# Fine-tuning recovers what post-training quantization loses: mnist1d-cnn at size=3bit, for the
# uniform 3-bit policy and a mixed one from the ILP (hessian sensitivities, weights {2,3,4,8}).
# Writes benchmarks/results/finetune_mnist1d/{uniform,ilp}{.json,_finetune.json,_eval.json}.
# About 3 minutes on 2 shared CPU cores once the float model is cached.
set -euo pipefail
out=${1:-benchmarks/results/finetune_mnist1d}
mkdir -p "$out"
nice bitsearch search --task mnist1d-cnn --searcher uniform --budget size=3bit --out "$out/uniform.json"
nice bitsearch search --task mnist1d-cnn --searcher ilp --weight-bits 2,3,4,8 --budget size=3bit \
    --out "$out/ilp.json"
for name in uniform ilp; do
    nice bitsearch finetune "$out/$name.json" --task mnist1d-cnn --epochs 5 --threads 1 \
        --out "$out/$name.pt" --json > "$out/${name}_finetune.json"
    nice bitsearch eval "$out/$name.json" --task mnist1d-cnn --model "$out/$name.pt" --json \
        > "$out/${name}_eval.json"
    rm -f "$out/$name.pt" "$out/$name.pt.ckpt"   # the models are not committed
done
