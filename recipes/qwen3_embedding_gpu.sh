#!/usr/bin/env bash
# The Qwen3-Embedding recipe on GPUs with a real decoder backbone (Qwen3-0.6B class):
#   weakly-supervised pre-training -> hard-negative mining -> SFT with saved models -> SLERP merge -> eval.
#
# Usage: bash recipes/qwen3_embedding_gpu.sh [WORK_DIR]          (default: runs/qwen3)
# Set the inputs through the environment (every path is yours; nothing is downloaded at run time):
#   MODEL        a local Hugging Face folder of the base decoder, e.g. a snapshot of Qwen/Qwen3-0.6B-Base
#                or Qwen/Qwen3-Embedding-0.6B (to adapt an existing embedder, skip stage 1: PRETRAIN=0)
#   WEAK_PAIRS   glob of large weak (query, positive) jsonl/parquet shards for pre-training
#   SFT_PAIRS    labelled (query, positive) pairs for SFT
#   CORPUS       documents to mine negatives from (jsonl with a `text` column, or a BEIR corpus.jsonl)
#   EVAL         a held-out BEIR folder (or pairs file) the training never sees
#   GPUS         processes to launch (default: all visible GPUs)
#   TRAIN_OVERRIDES  Hydra overrides appended to both training stages (they win over the recipe's),
#                e.g. a smoke run: TRAIN_OVERRIDES="train.max_steps=3 batch.size=16 save.model_every_n_steps=1"
# Sizes are for 80 GB GPUs (H100/A100); halve batch.mini_batch_size if memory runs out.
set -euo pipefail
WORK=${1:-runs/qwen3}
: "${MODEL:?set MODEL to a local folder of the base decoder}" "${SFT_PAIRS:?set SFT_PAIRS}" "${EVAL:?set EVAL}"
CORPUS=${CORPUS:-}
GPUS=${GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
LAUNCH=(accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes "$GPUS" -m embedtune)
# One decoder set-up for both training stages: last-token pooling over the appended <|endoftext|>,
# left padding, Qwen3's query instruction, bf16 autocast over float32 master weights, SDPA attention.
DECODER=(backbone=qwen3_0_6b backbone.dtype=float32 backbone.max_length=512 train.mixed_precision=bf16
         backbone.gradient_checkpointing=true negatives.cross_device=true eval.batch_size=128)
read -ra EXTRA <<< "${TRAIN_OVERRIDES:-}"
SFT_FROM=$MODEL

if [ "${PRETRAIN:-1}" = 1 ]; then
    : "${WEAK_PAIRS:?set WEAK_PAIRS (or PRETRAIN=0 to start SFT from MODEL)}"
    echo "== 1. pretrain: weak pairs, in-batch negatives only, GradCache batch 1024 per GPU, lr 1e-4"
    "${LAUNCH[@]}" train stage=pretrain "${DECODER[@]}" backbone.path="$MODEL" \
        data=stream "data.sources=[{path: '$WEAK_PAIRS', weight: 1}]" data.eval="$EVAL" \
        batch.size=1024 batch.gradcache=true batch.mini_batch_size=64 train.lr=1e-4 train.max_steps=2000 \
        train.warmup_ratio=0.05 save.state_every_n_steps=200 eval.every_n_steps=500 resume=auto \
        logger=tensorboard output_dir="$WORK/pretrain" "${EXTRA[@]}"
    SFT_FROM=$WORK/pretrain/final
fi

echo "== 2. mine: 7 hard negatives per query from ranks 10-100, false negatives filtered by a 5% relative margin"
embedtune mine --model "$SFT_FROM" --data "$SFT_PAIRS" ${CORPUS:+--corpus "$CORPUS"} --out "$WORK/mined.jsonl" \
    --num-negatives 7 --range-min 10 --range-max 100 --relative-margin 0.05 --drop-short --batch-size 256

echo "== 3. sft: Qwen3's loss (query-query and document-document terms, false-negative mask), 7 negatives"
"${LAUNCH[@]}" train stage=sft "${DECODER[@]}" backbone.path="$SFT_FROM" loss=qwen3 \
    data=files data.train="$WORK/mined.jsonl" data.eval="$EVAL" negatives.per_query=7 \
    batch.size=64 batch.gradcache=true batch.mini_batch_size=64 train.lr=2e-5 train.epochs=1 \
    save.model_every_n_steps=100 save.state_every_n_steps=100 eval.every_n_steps=100 resume=auto \
    logger=tensorboard output_dir="$WORK/sft" "${EXTRA[@]}"

echo "== 4. merge: the spherical mean of the last three saved SFT models and the final model"
mapfile -t CHECKPOINTS < <(ls -d "$WORK"/sft/models/step-* | tail -3)
embedtune merge --slerp "${CHECKPOINTS[@]}" "$WORK/sft/final" --out "$WORK/merged"

echo "== 5. eval: every stage on the held-out set, side by side"
embedtune eval --model "$SFT_FROM" "${CHECKPOINTS[@]}" "$WORK/sft/final" "$WORK/merged" --data "$EVAL" \
    --batch-size 128 --out "$WORK/eval.json"
embedtune report "$WORK/sft"
