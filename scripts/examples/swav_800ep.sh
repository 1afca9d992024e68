#!/bin/bash
# SwAV, 800 epochs (the reference's scripts/swav_800ep_pretrain.sh, line by
# line) on ONE machine with 8 GPUs: the reference ran it on 8 nodes x 8 GPUs
# (batch 64 x 64 = 4096); here 8 ranks x 64 = 512 images per step, so the
# learning rates are the reference's as written (scale them for your batch).
# For the 64-GPU layout see scripts/slurm/swav_800ep_64gpu.sbatch.
#
#   DATASET_PATH=/data/imagenet/train scripts/examples/swav_800ep.sh
#
# Checked by tests/fault/test_examples.py (every flag parses).
set -euo pipefail
SWAV=${SWAV:-swav}
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet/train}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./experiments/swav_800ep_pretrain}
mkdir -p "$EXPERIMENT_PATH"

# 64 CPUs (8 tasks x 8 in the reference): 8 loaders x 7 decode threads.
"$SWAV" train \
--nproc 8 \
--loaders 8 \
--workers 7 \
--data_path "$DATASET_PATH" \
--nmb_crops 2 6 \
--size_crops 224 96 \
--min_scale_crops 0.14 0.05 \
--max_scale_crops 1. 0.14 \
--crops_for_assign 0 1 \
--temperature 0.1 \
--epsilon 0.05 \
--sinkhorn_iterations 3 \
--feat_dim 128 \
--nmb_prototypes 3000 \
--queue_length 0 \
--epochs 800 \
--batch_size 64 \
--base_lr 4.8 \
--final_lr 0.0048 \
--freeze_prototypes_niters 313 \
--wd 0.000001 \
--warmup_epochs 10 \
--start_warmup 0.3 \
--arch resnet50 \
--use_fp16 true \
--sync_bn apex \
--dump_path "$EXPERIMENT_PATH"
