#!/usr/bin/env bash
# Llama-3-8B: continued pretraining from 8K to 128K tokens with AnchorAttention, on H100 nodes of 8 GPUs.
#
# Parallelism, for 8 GPUs per node: TP=2 x CP=8 = two nodes per model replica; DP = NNODES / 2 (NNODES even).
#   - TP=2: all-reduces on NVLink inside a node; fp32 weights per GPU 8B x 4 B / 2 = 16 GB; the 128K-entry
#     vocabulary's logits are split too (16K tokens x 64K entries x 4 B = 4 GB per GPU instead of 8).
#   - CP=8: each GPU holds 128K / 8 = 16K tokens, as in the 64K recipe. Llama-3's GQA (8 KV heads) makes a
#     ring step's K/V only 16K x 8 x 128 x 2 x 2 B = 64 MB, small enough to cross nodes over InfiniBand
#     while a 16K x 16K attention block computes; CP=4 inside one node would mean 32K tokens per GPU.
#   - Full activation recomputation: 16K x 4096 x 4 B = 256 MB kept per layer.
#   - Distributed optimizer: gradients and Adam moments sharded over the DP x CP ranks.
# RoPE: ABF from Llama-3's 5e5 to base 1e7 for 128K (the AnchorAttention paper's value at 128K).
#
# Before (see examples/README.md):
#   python tools/convert_hf_checkpoint.py import --hf-dir Meta-Llama-3-8B --save checkpoints/llama3-8b-tp2 \
#       --tensor-model-parallel-size 2 --rotary-base 1e7
#   python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/llama3_128k \
#       --tokenizer-type HuggingFaceTokenizer --tokenizer-model Meta-Llama-3-8B --seq-length 131072 \
#       --pack best-fit --workers 32
# Then on every node:
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0> bash examples/llama3_8b_128k.sh [extra trainer flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TP=2
CP=8
SEQ_LENGTH=131072
CKPT=${CKPT:-checkpoints/llama3-8b-tp2}        # converted with --tensor-model-parallel-size 2
DATA=${DATA:-data/llama3_128k_text_document}  # packed at --seq-length 131072
SAVE=${SAVE:-runs/llama3-8b-128k}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}              # 16 x 128K = 2M tokens per step
TRAIN_ITERS=${TRAIN_ITERS:-1000}

# Llama's architecture, stated (Megatron-LM's defaults are LayerNorm, GeLU, biases, tied embeddings and dropout
# 0.1); the converted checkpoint records the same, and a flag that contradicts it is an error.
MODEL=(
    --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32
    --num-query-groups 8 --vocab-size 128256 --make-vocab-size-divisible-by 128 --norm-epsilon 1e-5
    --rotary-base 1e7
    --normalization RMSNorm --swiglu --disable-bias-linear --untie-embeddings-and-output-weights
    --hidden-dropout 0 --attention-dropout 0
)
recipe_flags
launch_pretrain "${MODEL[@]}" "${RECIPE[@]}" "$@"
