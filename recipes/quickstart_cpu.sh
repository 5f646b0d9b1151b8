#!/usr/bin/env bash
# The three-stage recipe on the embedded default data, on a CPU, in minutes:
#   data -> pretrain (in-batch negatives) -> mine hard negatives -> SFT -> SLERP merge -> eval.
# Usage: bash recipes/quickstart_cpu.sh [WORK_DIR]      (default: runs/quickstart)
set -euo pipefail
WORK=${1:-runs/quickstart}
PAIRS=${PAIRS:-1024}          # training pairs (the stdlib has ~3,000)
export HF_HUB_OFFLINE=1

echo "== 1. data: Python stdlib pairs, held-out packages as a BEIR folder"
embedtune data --out "$WORK/data" --max-train-pairs "$PAIRS" --max-eval-queries 300

echo "== 2. pretrain: in-batch negatives only, batch 64, lr 5e-5"
embedtune train stage=pretrain data=files data.train="$WORK/data/train.jsonl" data.eval="$WORK/data/eval" \
    negatives.per_query=0 eval.before=false output_dir="$WORK/pretrain"

echo "== 3. mine: 3 hard negatives per query with the pretrained model, false negatives filtered"
embedtune mine --model "$WORK/pretrain/final" --data "$WORK/data/train.jsonl" --out "$WORK/mined.jsonl" \
    --num-negatives 3 --range-min 1 --range-max 50 --margin 0.02 --drop-short

echo "== 4. sft: from the pretrained model, mined negatives, a model saved halfway for merging"
embedtune train stage=sft data=files data.train="$WORK/mined.jsonl" data.eval="$WORK/data/eval" \
    backbone=hf backbone.path="$WORK/pretrain/final" backbone.max_length=128 negatives.per_query=1 \
    save.model_every_n_steps=16 eval.before=false output_dir="$WORK/sft"

echo "== 5. merge: SLERP of the halfway model and the final SFT model"
embedtune merge --slerp "$WORK/sft/models/step-00016" "$WORK/sft/final" --t 0.5 --out "$WORK/merged"

echo "== 6. eval: every stage on the held-out packages"
embedtune eval --model all-MiniLM-L6-v2 "$WORK/pretrain/final" "$WORK/sft/models/step-00016" "$WORK/sft/final" "$WORK/merged" \
    --data "$WORK/data/eval" --out "$WORK/eval.json"
