# Sourced by the example launch scripts: cluster environment and the torchrun launcher.
#
# Environment (set by hand on each node, or by slurm_train.sbatch):
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE
# DRY_RUN=1 checks the flags, data and output paths on this machine (no GPU needed), prints the resolved
# configuration and exits.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# The flags both recipes share. The script sets TP, CP, SEQ_LENGTH, CKPT, DATA, SAVE, GLOBAL_BATCH and
# TRAIN_ITERS; LR, MIN_LR, WARMUP and TENSORBOARD_DIR (default $SAVE/tensorboard; empty: none, for machines
# without the tensorboard package) may come from the environment.
recipe_flags() {  # fills the array RECIPE
    if (( NNODES * GPUS_PER_NODE % (TP * CP) )); then
        echo "error: TP=$TP x CP=$CP needs a multiple of $((TP * CP)) GPUs;" \
            "NNODES=$NNODES x GPUS_PER_NODE=$GPUS_PER_NODE" >&2
        exit 1
    fi
    RECIPE=(
        --tensor-model-parallel-size "$TP" --context-parallel-size "$CP" --sequence-parallel
        --use-distributed-optimizer --recompute-granularity full --cross-entropy-chunk-size 1024 --bf16
        --exit-signal-handler
        --data-path "$DATA" --split 998,1,1 --seq-length "$SEQ_LENGTH"
        --attention-mode anchor --position-ids global
        --micro-batch-size 1 --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS"
        --lr "${LR:-2e-5}" --min-lr "${MIN_LR:-2e-6}" --lr-decay-style cosine --lr-warmup-iters "${WARMUP:-20}"
        --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 --seed 1234
        --pretrained-checkpoint "$CKPT" --load "$SAVE" --save "$SAVE" --save-interval 100
        --eval-interval 100 --eval-iters 4 --log-interval 1 --log-jsonl "$SAVE/train_log.jsonl"
    )
    local tensorboard=${TENSORBOARD_DIR-$SAVE/tensorboard}
    if [[ -n "$tensorboard" ]]; then RECIPE+=(--tensorboard-dir "$tensorboard"); fi
}

launch_pretrain() {  # launch_pretrain TRAINER_FLAGS...
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        WORLD_SIZE=$((NNODES * GPUS_PER_NODE)) RANK=0 exec "$PYTHON" -m megatron_anchor.pretrain "$@" --dry-run
    fi
    if [[ -n "${SAVE:-}" ]]; then mkdir -p "$SAVE"; fi
    # Preemption (Slurm signals every process of the job): the workers' --exit-signal-handler finishes the
    # step, saves and exits 0, and torchrun must leave SIGTERM to them and wait. torchrun ignores the
    # signal only if told so: torch >= 2.9 reads TORCHELASTIC_SIGNALS_TO_HANDLE, but a torchrun that has
    # --signals-to-handle (torch 2.13) overwrites that variable with the flag's default, which includes
    # SIGTERM; older torchruns forward the signal and give the workers --shutdown-timeout to save.
    export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
    local signals="" usage
    usage=$("$PYTHON" -m torch.distributed.run --help 2>/dev/null || true)
    if [[ "$usage" == *--signals-to-handle* ]]; then
        signals="--signals-to-handle $TORCHELASTIC_SIGNALS_TO_HANDLE"
    fi
    # megatron-core's sequence-parallel communication overlap relies on one CUDA work queue, as in
    # Megatron-LM's recipes.
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    trap '' TERM
    # torchrun, run by the same interpreter whose --help was read above ($signals: unquoted, two words).
    # shellcheck disable=SC2086
    exec "$PYTHON" -m torch.distributed.run $signals --nnodes "$NNODES" --node-rank "$NODE_RANK" \
        --nproc-per-node "$GPUS_PER_NODE" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
        -m megatron_anchor.pretrain "$@"
}
