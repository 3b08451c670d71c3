#!/usr/bin/env bash
# GPU checks of issue 10 (item 9), for a machine with an NVIDIA GPU. Run from the checkout:
#
#     bash bench/gpu_check.sh                  # numbers to $OUT (default bench/gpu_out/)
#     OUT=/tmp/gpu LAYERS=8 QUICK=1 bash bench/gpu_check.sh    # a shorter run
#     DOC=docs/scale.md bash bench/gpu_check.sh                 # also puts them in docs/scale.md
#
# 1. streamed analysis of the synthetic Llama-2-7B-shaped checkpoint (LAYERS, default 32:
#    13.5 GB of disk, written first by bench/scale.py) on CUDA, with time per matrix;
# 2. Wanda and SparseGPT on the default model, CUDA against CPU: masks and perplexity;
# 3. bf16 perplexity throughput against a bare forward loop;
# 4. --device-map across the GPUs (or GPU and CPU) against one device: eval and Wanda perplexity.
# Each part writes OUT/PART.json (bench/gpu_check.py); then OUT/gpu_check.md gathers them.
# Environment: PYTHON (default .venv/bin/python, else python3), OUT, LAYERS, CKPT_DIR (where
# the checkpoint is written), CALIB / EVAL (text sources, default python-docs), QUICK=1
# (fewer tokens), PARTS (default "analysis agreement throughput"), DOC, MODEL (default
# smollm2-135m). A dry run of the script itself on a machine without a GPU:
#     DEVICE=cpu PRESET=tiny LAYERS=2 MODEL=some/tiny/folder QUICK=1 bash bench/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
die() { echo "gpu_check: error: $*" >&2; exit 2; }

DEVICE="${DEVICE:-cuda}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ "$DEVICE" == "cuda" ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: run this on a machine with an NVIDIA GPU"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || die "nvidia-smi cannot talk to a GPU (driver not loaded?)"
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "$PYTHON has no CUDA-enabled torch (torch.cuda.is_available() is False): install torch's CUDA build"
else
    echo "gpu_check: DEVICE=$DEVICE: a dry run of the script, no GPU numbers" >&2
fi

OUT="${OUT:-bench/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT
LAYERS="${LAYERS:-32}"
PRESET="${PRESET:-llama2-7b}"
MODEL="${MODEL:-smollm2-135m}"
CKPT_DIR="${CKPT_DIR:-$HOME/.cache/alphaprune-bench/scale}"
CALIB="${CALIB:-python-docs}"
EVAL="${EVAL:-python-docs}"
PARTS="${PARTS:-analysis agreement throughput placement}"
if [[ "${QUICK:-0}" == "1" ]]; then
    DATA=(--seqlen 256 --eval-windows 4); SAMPLES=(--calib-samples 8)
else
    DATA=(--seqlen 1024 --eval-windows 16); SAMPLES=(--calib-samples 32)
fi
# the cache (the dequantized default model, once) and run history of these runs: a scratch
# folder, away from the user's and out of OUT, which holds only the numbers
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
export ALPHAPRUNE_CACHE="$SCRATCH/cache" ALPHAPRUNE_DATA="$SCRATCH/data"

for part in $PARTS; do
    echo "== $part" >&2
    start=$(date +%s)
    case "$part" in
        analysis) "$PYTHON" bench/gpu_check.py analysis --out "$OUT" --dir "$CKPT_DIR" --layers "$LAYERS" \
            --preset "$PRESET" --device "$DEVICE" ;;
        agreement) "$PYTHON" bench/gpu_check.py agreement --out "$OUT" --model "$MODEL" --devices "cpu,$DEVICE" \
            --calib "$CALIB" --eval "$EVAL" "${DATA[@]}" "${SAMPLES[@]}" ;;
        throughput) "$PYTHON" bench/gpu_check.py throughput --out "$OUT" --model "$MODEL" --device "$DEVICE" \
            --eval "$EVAL" "${DATA[@]}" ;;
        placement) "$PYTHON" bench/gpu_check.py placement --out "$OUT" --model "$MODEL" --device "$DEVICE" \
            --calib "$CALIB" --eval "$EVAL" "${DATA[@]}" "${SAMPLES[@]}" ;;
        *) die "unknown part '$part' in PARTS: use analysis, agreement, throughput, placement" ;;
    esac
    echo "== $part: $(( $(date +%s) - start )) s" >&2
done

if [[ -n "${DOC:-}" ]]; then
    "$PYTHON" bench/gpu_check.py report --out "$OUT" --doc "$DOC"
else
    "$PYTHON" bench/gpu_check.py report --out "$OUT"
fi
echo "gpu_check: numbers in $OUT (gpu_check.md, *.json)" >&2
