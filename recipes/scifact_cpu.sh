#!/usr/bin/env bash
# SciFact on a CPU in about ten minutes, the stages the ablation kept (scripts/ablation.py;
# the README's "What each stage buys"):
#   split SciFact's judged queries (30% held out) -> mine one hard negative per training query with
#   the base model, false negatives filtered -> SFT on them -> a short general SFT on SNLI -> merge
#   the two task vectors by slerp -> score the merged model on the held-out queries and STS-B dev.
# No weak-pair pre-training: all-MiniLM-L6-v2 was trained on S2ORC title/abstract pairs, and in
# the ablation the stage cost held-out nDCG@10 here.
# Usage: bash recipes/scifact_cpu.sh [WORK_DIR]     (default: runs/scifact-cpu)
# DATA points at a folder with scifact/ (BEIR layout), snli-subset/ and stsb/ (default: ../shared/data).
set -euo pipefail
WORK=${1:-runs/scifact-cpu}
DATA=${DATA:-../shared/data}
LENGTH=128   # document tokens in mining, training and scoring: SciFact abstracts are cut, at CPU speed
export HF_HUB_OFFLINE=1

echo "== 1. data: SciFact's 809 judged train queries, 30% held out by query (with the whole corpus)"
embedtune data --beir "$DATA/scifact" --split train --eval-fraction 0.3 --out "$WORK/data"

echo "== 2. mine: per training query, the base model's best-ranked document scoring below 95% of its positive"
# NV-Retriever's positive-aware filter (--relative-margin): what scores near the positive is most
# likely an unjudged relevant abstract, not a negative. Searched to rank 1,000 so that a query whose
# positive scores low still finds one; the few that find none are left out.
embedtune mine --model all-MiniLM-L6-v2 --data "$WORK/data/train.jsonl" --corpus "$DATA/scifact/corpus.jsonl" \
    --out "$WORK/mined.jsonl" --num-negatives 1 --range-max 1000 --relative-margin 0.05 --drop-short \
    --max-length "$LENGTH" --batch-size 128

echo "== 3. sft, domain: 3 epochs of the training queries, each with its mined negative"
embedtune train stage=sft data=files data.train="$WORK/mined.jsonl" negatives.per_query=1 train.epochs=3 \
    backbone.max_length="$LENGTH" output_dir="$WORK/sft-scifact"

echo "== 4. sft, general: SNLI premise -> entailed hypothesis, the contradiction as hard negative"
embedtune train stage=sft data=nli "data.train=[$DATA/snli-subset/snli_1.0_dev.jsonl,$DATA/snli-subset/snli_1.0_test.jsonl]" \
    backbone.max_length="$LENGTH" output_dir="$WORK/sft-nli"

echo "== 5. merge: slerp of the two task vectors against their parent, all-MiniLM-L6-v2, weighted to the domain"
# Two fine-tunes of one parent on unrelated data have nearly orthogonal task vectors (the merge
# table prints their cosine), and slerp at t of orthogonal vectors keeps sin(t x 90 degrees) of
# each: t=0.9 keeps nearly all of the domain's change and a little of the general one. The
# README's SciFact recipe table has the measured trade-off over t.
embedtune merge --slerp --base all-MiniLM-L6-v2 "$WORK/sft-nli/final" "$WORK/sft-scifact/final" --t 0.9 --out "$WORK/merged"

echo "== 6. eval: the domain SFT and the merged model on the held-out SciFact queries and STS-B dev"
embedtune eval --model "$WORK/sft-scifact/final" "$WORK/merged" --data "$WORK/data/eval" "$DATA/stsb/sts-dev.csv" \
    --max-length "$LENGTH" --batch-size 128 --out "$WORK/eval.json"
