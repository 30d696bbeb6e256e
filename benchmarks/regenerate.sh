#!/usr/bin/env bash
# Regenerate every committed result that README.md and docs/ show, from the float weights the
# package ships (nothing is trained: every built-in model, every width multiplier the suites use,
# comes from bitsearch/tasks/weights/).  Run it from the repository root, in the environment of
# `pip install -e ".[test]"`, on a quiet machine (the bench tables record search seconds, and the
# timing steps measure nothing else); it takes a few hours on 2 cores.
#
#   bash benchmarks/regenerate.sh                    # every step, in order, into benchmarks/results
#   bash benchmarks/regenerate.sh --list             # the steps: name, what it writes, timing or not
#   bash benchmarks/regenerate.sh --dry-run          # print every command, run nothing
#   bash benchmarks/regenerate.sh --only mnist_lenet5,readme_tables
#   bash benchmarks/regenerate.sh --quick DIR        # every step at reduced settings, written under DIR
#                                                    # (a check of this script; commits nothing)
#
# A bench step removes its old results folder first (git holds the committed one), so a run that
# fails leaves the folder to be restored with `git checkout -- benchmarks/results/NAME`.  Each step
# stops the script on failure (set -e).  The numbers written by hand in the prose (listed at the end,
# `--list` shows them too) are not regenerated: check them against the new files.
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
QUICK=0
DRY=0
ONLY=""

# name | writes (under RESULTS) | kind: acc = deterministic numbers, time = timings (quiet machine)
STEPS=(
  "weights|nothing: checks the shipped float weights against their recipes' keys|acc"
  "main_job|nothing: re-runs the README's main job and asserts its numbers (tests/test_shipped.py)|acc"
  "float_models|float_models/{report.md,results.json}|acc"
  "mnist1d_layer|mnist1d_layer/ (README bench table)|acc+time"
  "mnist_lenet5|mnist_lenet5/ (README bench table)|acc+time"
  "mnist1d_kernel|mnist1d_kernel/ (README bench table)|acc+time"
  "width_vs_mixed|width_vs_mixed/ (README bench table)|acc+time"
  "ilp_mnist1d|ilp_mnist1d/ (README 'other measurements')|acc+time"
  "fracbits_mnist1d|fracbits_mnist1d/ (README 'other measurements')|acc+time"
  "rl_mnist1d|rl_mnist1d/ (README 'other measurements')|acc+time"
  "scale|scale/ (README 'other measurements': search seconds)|time"
  "readme_tables|README.md's <!-- bench-tables --> block, from the four table suites above|acc"
  "finetune|finetune_mnist1d/*.json|acc"
  "reproducibility|reproducibility/{report.md,results.json}|acc"
  "crosslayer_act8|crosslayer_act8/ (docs/crosslayer.md: iqp against the oracle, acts 8 bits)|acc+time"
  "crosslayer_float|crosslayer_float/ (docs/crosslayer.md: iqp against the oracle, acts float)|acc+time"
  "crosslayer_kernel|crosslayer_kernel/ (docs/crosslayer.md: kernel-wise iqp and ilp)|acc+time"
  "proxy_ceiling|proxy_ceiling/{README.md,results.json}: the ceiling of a loss proxy, beside crosslayer_*'s iqp|acc"
  "onnx_accuracy|onnx_accuracy/{README.md,results.json}: onnxruntime vs bitsearch eval (docs/deploy.md)|acc"
  "onnx_latency|onnx_latency/: the onnxruntime latency table, the latency search and its measured latency|time"
  "tiny_llama|tiny_llama.{json,md}, tiny_llama_pareto.png (README, docs/llm.md)|acc+time"
  "env_throughput|env_throughput.{json,md}|time"
  "fakequant_speed|fakequant_speed.{json,md}|time"
  "fracbits_epoch_cost|fracbits_epoch_cost.json|time"
  "ilp_scale|ilp_scale.{json,md}|time"
  "latency_cpu|latency_cpu/{mnist1d-cnn_batch64,resnet18_batch1}.csv|time"
)

# Numbers written by hand in prose, to be checked against the regenerated files.  (The README's
# main job and its "Why refine" example are checked by tests/test_shipped.py, the bench tables by
# tests/test_readme.py.)
HAND_WRITTEN="
  README.md 'Other measurements' table and docs/rl.md: the ilp_mnist1d/, rl_mnist1d/ and
    fracbits_mnist1d/ report.md rows,
    scale/report.md, env_throughput.md, fracbits_epoch_cost.json, fakequant_speed.md,
    finetune_mnist1d/ (and its float top-1), latency_cpu/, ilp_scale.md
  README.md tiny-llama table and docs/llm.md            <- tiny_llama.md
  benchmarks/results/finetune_mnist1d/README.md          <- finetune_mnist1d/*.json
  benchmarks/results/latency_cpu/README.md               <- latency_cpu/*.csv
  docs/deploy.md (onnxruntime accuracy and latency)       <- onnx_accuracy/README.md, onnx_latency/README.md
  docs/crosslayer.md ('Measured' tables and prose)        <- crosslayer_*/report.md, proxy_ceiling/README.md
  benchmarks/mnist_lenet5.toml and readme_tables.py text <- float_models/report.md (mnist-lenet5 top-1)"

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --list)
      for step in "${STEPS[@]}"; do IFS='|' read -r name what kind <<<"$step"; printf '%-20s %-9s %s\n' "$name" "$kind" "$what"; done
      printf '\nwritten by hand (check after a run):%s\n' "$HAND_WRITTEN"
      exit 0 ;;
    --dry-run) DRY=1 ;;
    --only) ONLY=",${2:?--only needs step names},"; shift ;;
    --quick) QUICK=1; RESULTS="${2:?--quick needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "regenerate.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "$ONLY" ]; then
  for name in ${ONLY//,/ }; do
    known=0
    for step in "${STEPS[@]}"; do [ "${step%%|*}" = "$name" ] && known=1; done
    [ "$known" = 1 ] || { echo "regenerate.sh: no step '$name' (see --list)" >&2; exit 2; }
  done
fi
if [ "$QUICK" = 1 ]; then
  case "$(realpath -m "$RESULTS")/" in "$(pwd)/benchmarks/results/"*)
    echo "regenerate.sh: --quick writes elsewhere than benchmarks/results" >&2; exit 2 ;; esac
  [ "$DRY" = 1 ] || mkdir -p "$RESULTS"
fi

run() {  # print the command, then run it under nice (unless --dry-run)
  printf '+ %s\n' "$*"
  [ "$DRY" = 1 ] || nice -n 10 "$@"
}

bench() {  # a suite: its folder removed, then the whole suite with two local worker processes
  local name=$1 quick=()
  [ "$QUICK" = 1 ] && quick=(--only uniform --no-plots)
  printf '+ rm -rf %s\n' "$RESULTS/$name"
  [ "$DRY" = 1 ] || rm -rf "${RESULTS:?}/$name"
  run bitsearch bench "benchmarks/$name.toml" --out "$RESULTS/$name" --jobs 2 "${quick[@]}"
}

step() {
  local name=$1
  case "$ONLY" in ""|*",$name,"*) ;; *) return 0 ;; esac
  printf '\n== %s\n' "$name"
  case "$name" in
    weights)
      run python -m bitsearch.tasks.ship --check
      run python -m bitsearch.tasks.tiny_llama --check ;;
    main_job)
      run python -m pytest -q -p no:cacheprovider tests/test_shipped.py -k readme_main_job ;;
    float_models)
      run python benchmarks/float_models.py --out "$RESULTS/float_models" ;;
    mnist1d_layer|mnist_lenet5|mnist1d_kernel|width_vs_mixed|ilp_mnist1d|fracbits_mnist1d|rl_mnist1d|scale)
      bench "$name" ;;
    crosslayer_act8|crosslayer_float|crosslayer_kernel)
      bench "$name" ;;
    proxy_ceiling)  # after the crosslayer suites: it reads their iqp runs from RESULTS
      if [ "$QUICK" = 1 ]; then
        run python benchmarks/proxy_ceiling.py --bench "$RESULTS" --out "$RESULTS/proxy_ceiling" --tasks digits-cnn \
            --acts 8 --budgets size=2.5bit
      else run python benchmarks/proxy_ceiling.py --bench "$RESULTS" --out "$RESULTS/proxy_ceiling"; fi ;;
    readme_tables)
      if [ "$QUICK" = 1 ]; then run python benchmarks/readme_tables.py --check  # reads benchmarks/results
      else run python benchmarks/readme_tables.py; fi ;;
    finetune)
      run bash benchmarks/finetune_mnist1d.sh "$RESULTS/finetune_mnist1d" ;;
    reproducibility)
      run python benchmarks/reproducibility.py --out "$RESULTS/reproducibility" ;;
    onnx_accuracy)
      if [ "$QUICK" = 1 ]; then run python benchmarks/onnx_accuracy.py --out "$RESULTS/onnx_accuracy" --tasks mnist1d-cnn --epochs 1
      else run python benchmarks/onnx_accuracy.py --out "$RESULTS/onnx_accuracy"; fi ;;
    onnx_latency)
      if [ "$QUICK" = 1 ]; then run python benchmarks/onnx_latency.py --out "$RESULTS/onnx_latency" --repeats 3 --provisional
      else run python benchmarks/onnx_latency.py --out "$RESULTS/onnx_latency"; fi ;;
    tiny_llama)
      if [ "$QUICK" = 1 ]; then
        run python benchmarks/tiny_llama.py --out "$RESULTS" --rule-bases 4 --searchers ilp --episodes 4
      else run python benchmarks/tiny_llama.py --out "$RESULTS"; fi ;;
    env_throughput)
      if [ "$QUICK" = 1 ]; then run python benchmarks/env_throughput.py --out "$RESULTS" --episodes 4 --warmup 2
      else run python benchmarks/env_throughput.py --out "$RESULTS"; fi ;;
    fakequant_speed)
      if [ "$QUICK" = 1 ]; then run python benchmarks/fakequant_speed.py --out "$RESULTS" --repeats 2 --resnet-batch 0
      else run python benchmarks/fakequant_speed.py --out "$RESULTS"; fi ;;
    fracbits_epoch_cost)
      if [ "$QUICK" = 1 ]; then run python benchmarks/fracbits_epoch_cost.py --out "$RESULTS/fracbits_epoch_cost.json" --rounds 1
      else run python benchmarks/fracbits_epoch_cost.py --out "$RESULTS/fracbits_epoch_cost.json"; fi ;;
    ilp_scale)
      if [ "$QUICK" = 1 ]; then run python benchmarks/ilp_scale.py --out "$RESULTS" --repeats 1 --skip-pulp --skip-llama
      else run python benchmarks/ilp_scale.py --out "$RESULTS"; fi ;;
    latency_cpu)
      local repeats=(5 3)
      [ "$QUICK" = 1 ] && repeats=(1 1)
      [ "$DRY" = 1 ] || mkdir -p "$RESULTS/latency_cpu"
      run bitsearch latency measure --task mnist1d-cnn --weight-bits 4,8,16 --batch 64 --repeats "${repeats[0]}" \
          --out "$RESULTS/latency_cpu/mnist1d-cnn_batch64.csv"
      run bitsearch latency measure --task resnet18 --weight-bits 4,8,16 --repeats "${repeats[1]}" --warmup 1 \
          --out "$RESULTS/latency_cpu/resnet18_batch1.csv" ;;
  esac
}

for entry in "${STEPS[@]}"; do step "${entry%%|*}"; done
printf '\nDone. Written by hand, to check against the new results:%s\n' "$HAND_WRITTEN"
