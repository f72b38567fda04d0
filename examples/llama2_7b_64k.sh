#!/usr/bin/env bash
# Llama-2-7B: continued pretraining from 4K to 64K tokens with AnchorAttention, on H100 nodes of 8 GPUs.
#
# Parallelism, for 8 GPUs per node: TP=2 x CP=4 = one node per model replica; DP = NNODES.
#   - TP=2: the tensor-parallel all-reduces (every layer, forward and backward) stay on NVLink inside the
#     node; fp32 weights per GPU halve (7B x 4 B / 2 = 13 GB), and so do the vocabulary-parallel logits.
#   - CP=4: each GPU holds 64K / 4 = 16K tokens. Llama-2 has 32 KV heads (no GQA), so the ring passes the
#     K/V of every head: keeping the CP ring inside the node (NVLink) keeps it hidden behind attention.
#   - Full activation recomputation: only each layer's input survives the forward,
#     16K tokens x 4096 x 4 B = 256 MB per layer, 8 GB for 32 layers.
#   - Distributed optimizer: gradients and Adam moments sharded over the DP x CP ranks.
# RoPE: ABF to base 5e6 for 64K (the AnchorAttention paper: 1e6 at 16K-32K, 5e6 at 64K, 1e7 at 128K); the
# converted checkpoint records it, and --rotary-base below must agree.
#
# Before (see examples/README.md):
#   python tools/convert_hf_checkpoint.py import --hf-dir Llama-2-7b-hf --save checkpoints/llama2-7b-tp2 \
#       --tensor-model-parallel-size 2 --rotary-base 5e6
#   python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/llama2_64k \
#       --tokenizer-type HuggingFaceTokenizer --tokenizer-model Llama-2-7b-hf --seq-length 65536 \
#       --pack best-fit --workers 32
# Then on every node:
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0> bash examples/llama2_7b_64k.sh [extra trainer flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TP=2
CP=4
SEQ_LENGTH=65536
CKPT=${CKPT:-checkpoints/llama2-7b-tp2}        # converted with --tensor-model-parallel-size 2
DATA=${DATA:-data/llama2_64k_text_document}   # packed at --seq-length 65536
SAVE=${SAVE:-runs/llama2-7b-64k}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}              # 32 x 64K = 2M tokens per step
TRAIN_ITERS=${TRAIN_ITERS:-1000}

# Llama's architecture, stated (Megatron-LM's defaults are LayerNorm, GeLU, biases, tied embeddings and dropout
# 0.1); the converted checkpoint records the same, and a flag that contradicts it is an error.
MODEL=(
    --num-layers 32 --hidden-size 4096 --ffn-hidden-size 11008 --num-attention-heads 32
    --num-query-groups 32 --vocab-size 32000 --make-vocab-size-divisible-by 128 --norm-epsilon 1e-5
    --rotary-base 5e6
    --normalization RMSNorm --swiglu --disable-bias-linear --untie-embeddings-and-output-weights
    --hidden-dropout 0 --attention-dropout 0
)
recipe_flags
launch_pretrain "${MODEL[@]}" "${RECIPE[@]}" "$@"
