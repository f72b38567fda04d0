#!/usr/bin/env bash
# Set up .venv, preprocess the bundled corpus into anchored 1024-token samples, and train a tiny model for
# 100 steps with context parallelism over 2 CPU processes (torchrun). Outputs go to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
OUT=runs/quickstart
mkdir -p "$OUT"
$PY tools/train_tokenizer.py --input examples/data/sample_corpus.jsonl --model-prefix "$OUT/tok" --vocab-size 2000
$PY tools/preprocess_data.py --input examples/data/sample_corpus.jsonl --output-prefix "$OUT/corpus" \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tok.model" \
  --seq-length 1024 --pack best-fit --workers 2
rm -rf "$OUT/ckpt"
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29511 \
  -m megatron_anchor.pretrain \
  --num-layers 2 --hidden-size 128 --ffn-hidden-size 384 --num-attention-heads 4 --num-query-groups 2 \
  --normalization RMSNorm --swiglu --disable-bias-linear --untie-embeddings-and-output-weights \
  --hidden-dropout 0 --attention-dropout 0 \
  --seq-length 1024 --context-parallel-size 2 --attention-mode anchor \
  --micro-batch-size 1 --global-batch-size 4 --train-iters 100 \
  --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 10 --lr-decay-style cosine --adam-beta2 0.95 \
  --data-path "$OUT/corpus_text_document" --split 95,5,0 \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tok.model" \
  --log-interval 10 --eval-interval 50 --eval-iters 2 \
  --save "$OUT/ckpt" --save-interval 100 --log-jsonl "$OUT/train_log.jsonl"
echo "checkpoint: $OUT/ckpt/$(cat "$OUT/ckpt/latest")   step log: $OUT/train_log.jsonl"
