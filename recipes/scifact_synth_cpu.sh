#!/usr/bin/env bash
# SciFact's stage one the Qwen3-Embedding way, on a CPU: a local LM writes a search query for every
# abstract, an embedding model keeps those that find their abstract again, and the model is
# pre-trained on them before the supervised stage of recipes/scifact_cpu.sh:
#   split SciFact's judged queries (30% held out) -> synth: SmolLM2-135M-Instruct writes one query per
#   abstract, kept when all-MiniLM-L6-v2 ranks the abstract in the top 10 of the corpus -> pre-train
#   30 steps of 64 on them -> mine one hard negative per training query -> SFT -> score on the
#   held-out queries. Steps 2-3 read only the corpus: no training query and no label.
# Measured (scripts/ablation.py's synth arm, the same steps at seeds 1-3; README "What each stage
# buys"): on SciFact with all-MiniLM-L6-v2 the synthetic stage neither helps nor hurts the SFT after
# it (recipes/scifact_cpu.sh skips it); it is the template for a corpus without labelled queries,
# one the base model has not seen, or a larger generator on a GPU (--model).
# Usage: bash recipes/scifact_synth_cpu.sh [WORK_DIR]     (default: runs/scifact-synth-cpu)
# DATA: a folder with scifact/ (BEIR layout) and stsb/ (default: ../shared/data).
# MAX_DOCS: synthesise for a seeded sample of this many abstracts (default: all 5,183, about 45 min
#   on 2 cores with bfloat16 units). DTYPE: the LM's dtype (default auto: bfloat16 on a CPU with
#   bfloat16 units, AVX512-BF16 or AMX, float32 on one without, where bfloat16 is slow).
set -euo pipefail
WORK=${1:-runs/scifact-synth-cpu}
DATA=${DATA:-../shared/data}
DTYPE=${DTYPE:-auto}
SAMPLE=${MAX_DOCS:+--max-docs $MAX_DOCS}
LENGTH=128   # document tokens in mining, training and scoring: SciFact abstracts are cut, at CPU speed
export HF_HUB_OFFLINE=1

echo "== 1. data: SciFact's 809 judged train queries, 30% held out by query (with the whole corpus)"
embedtune data --beir "$DATA/scifact" --split train --eval-fraction 0.3 --out "$WORK/data"

echo "== 2. synth: a query per abstract by SmolLM2-135M-Instruct, kept if all-MiniLM-L6-v2 finds the abstract in its top 10"
# The source is cut to 128 tokens in the prompt (the pair keeps the whole abstract): a CPU pays
# for prompt length, and the title and first sentences carry the topic. A killed run continues
# with the same command plus --resume.
# shellcheck disable=SC2086  # SAMPLE is empty or two words
embedtune synth --corpus "$DATA/scifact" --dtype "$DTYPE" --max-source-tokens 128 $SAMPLE \
    --filter-model all-MiniLM-L6-v2 --filter-k 10 --out "$WORK/synth.jsonl"

echo "== 3. pretrain: 30 steps of 64 synthetic pairs, in-batch negatives"
embedtune train stage=pretrain data=files data.train="$WORK/synth.jsonl" train.max_steps=30 \
    backbone.max_length="$LENGTH" output_dir="$WORK/pretrain"

echo "== 4. mine: per training query, the best-ranked document scoring below 95% of its positive"
embedtune mine --model all-MiniLM-L6-v2 --data "$WORK/data/train.jsonl" --corpus "$DATA/scifact/corpus.jsonl" \
    --out "$WORK/mined.jsonl" --num-negatives 1 --range-max 1000 --relative-margin 0.05 --drop-short \
    --max-length "$LENGTH" --batch-size 128

echo "== 5. sft: 3 epochs of the training queries, each with its mined negative, from the pre-trained model"
embedtune train stage=sft data=files data.train="$WORK/mined.jsonl" negatives.per_query=1 train.epochs=3 \
    backbone=hf backbone.path="$WORK/pretrain/final" backbone.max_length="$LENGTH" output_dir="$WORK/sft"

echo "== 6. eval: the pre-trained and the fine-tuned model on the held-out SciFact queries and STS-B dev"
embedtune eval --model "$WORK/pretrain/final" "$WORK/sft/final" --data "$WORK/data/eval" "$DATA/stsb/sts-dev.csv" \
    --max-length "$LENGTH" --batch-size 128 --out "$WORK/eval.json"
