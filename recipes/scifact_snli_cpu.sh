#!/usr/bin/env bash
# The three-stage recipe on real benchmark data, on a CPU (about an hour on 2 cores):
#   split SciFact's judged queries -> pretrain on weak pairs cut from the SciFact corpus ->
#   SFT on SNLI (general sentence similarity) and, separately, SFT on SciFact with mined hard
#   negatives (the domain) -> SLERP merge of the two -> eval of every stage on held-out SciFact
#   queries and STS-B dev, side by side.
# Usage: bash recipes/scifact_snli_cpu.sh [WORK_DIR]     (default: runs/scifact)
# DATA points at a folder with scifact/ (BEIR layout), snli-subset/ and stsb/ (default: ../shared/data).
set -euo pipefail
WORK=${1:-runs/scifact}
DATA=${DATA:-../shared/data}
export HF_HUB_OFFLINE=1
CPU=(backbone.max_length=128 eval.batch_size=128)   # 128 tokens: most abstracts' opening, at CPU speed

echo "== 1. data: SciFact's 809 judged train queries, 30% held out by query (with the whole corpus)"
embedtune data --beir "$DATA/scifact" --split train --eval-fraction 0.3 --out "$WORK/data"

echo "== 2. pretrain: weak (title, abstract) and (first sentence, rest) pairs of the corpus, in-batch negatives"
# Unsupervised domain adaptation: the corpus is what a retrieval system searches, so it is known at
# training time; the held-out queries and their judgements are not.
embedtune train stage=pretrain data=weak data.train="$DATA/scifact/corpus.jsonl" data.eval="$WORK/data/eval" \
    "data.kinds=[title_body,first_sentence_rest]" "${CPU[@]}" train.max_steps=30 output_dir="$WORK/pretrain"

echo "== 3a. sft, general: SNLI premise -> entailed hypothesis, the contradiction as hard negative"
embedtune train stage=sft data=nli "data.train=[$DATA/snli-subset/snli_1.0_dev.jsonl,$DATA/snli-subset/snli_1.0_test.jsonl]" \
    data.eval="$DATA/stsb/sts-dev.csv" backbone=hf backbone.path="$WORK/pretrain/final" "${CPU[@]}" \
    output_dir="$WORK/sft-nli"

echo "== 3b. mine: 3 hard negatives per SciFact training query from the whole corpus, near-positives dropped"
embedtune mine --model "$WORK/pretrain/final" --data "$WORK/data/train.jsonl" --corpus "$DATA/scifact/corpus.jsonl" \
    --out "$WORK/mined.jsonl" --num-negatives 3 --range-min 2 --range-max 50 --relative-margin 0.05 --drop-short

echo "== 3c. sft, domain: SciFact training queries with one mined hard negative each"
embedtune train stage=sft data=files data.train="$WORK/mined.jsonl" data.eval="$WORK/data/eval" \
    backbone=hf backbone.path="$WORK/pretrain/final" "${CPU[@]}" negatives.per_query=1 train.epochs=2 \
    output_dir="$WORK/sft-scifact"

echo "== 4. merge: SLERP of the two task vectors against their common parent (the whole weights are colinear)"
embedtune merge --slerp --base "$WORK/pretrain/final" "$WORK/sft-nli/final" "$WORK/sft-scifact/final" --t 0.5 --out "$WORK/merged"

echo "== 5. eval: every stage on held-out SciFact queries and STS-B dev"
embedtune eval --model all-MiniLM-L6-v2 "$WORK/pretrain/final" "$WORK/sft-nli/final" "$WORK/sft-scifact/final" "$WORK/merged" \
    --data "$WORK/data/eval" "$DATA/stsb/sts-dev.csv" --max-length 128 --batch-size 128 --out "$WORK/eval.json"
