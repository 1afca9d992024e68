#!/bin/bash
# SwAV, 200 epochs, batch 256 (4 GPUs x 64) on one machine: the reference's
# scripts/swav_200ep_bs256_pretrain.sh as `swav train`, line by line.
# The reference's #SBATCH lines (1 node, 4 GPUs, 4 tasks x 4 CPUs, 72 h,
# 150G) become --nproc 4 (one trainer per GPU) and loaders on the CPUs;
# --dist_url is not needed (the launcher wires the ranks over ipc://).
#
#   DATASET_PATH=/data/imagenet/train scripts/examples/swav_200ep_bs256.sh
#
# Checked by tests/fault/test_examples.py (every flag parses).
set -euo pipefail
SWAV=${SWAV:-swav}
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet/train}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./experiments/swav_200ep_bs256_pretrain}
mkdir -p "$EXPERIMENT_PATH"

# 16 CPUs: 4 loaders x 3 decode threads beside the 4 trainers; size them with
# scripts/bench-loader (docs/operations.md, "sizing loaders").
"$SWAV" train \
--nproc 4 \
--loaders 4 \
--workers 3 \
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
--queue_length 3840 \
--epoch_queue_starts 15 \
--epochs 200 \
--batch_size 64 \
--base_lr 0.6 \
--final_lr 0.0006 \
--freeze_prototypes_niters 5005 \
--wd 0.000001 \
--warmup_epochs 0 \
--arch resnet50 \
--use_fp16 true \
--sync_bn pytorch \
--dump_path "$EXPERIMENT_PATH"
