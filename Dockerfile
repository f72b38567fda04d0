# megatron_anchor on an NGC PyTorch container (Python 3.12; torch, Transformer Engine, apex and NCCL preinstalled).
# Base tag: 25.04 (the first NGC release with megatron-core 0.16-compatible torch >= 2.6 and Python 3.12).
# Build:  docker build -t megatron_anchor .
# Run:    docker run --gpus all --ipc=host --ulimit memlock=-1 -v /data:/data -it megatron_anchor
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

WORKDIR /workspace/megatron_anchor
COPY setup.py pyproject.toml README.md ./
COPY megatron_anchor ./megatron_anchor
COPY tools ./tools
COPY examples ./examples

# The container's torch, transformer-engine and apex must be kept: a constraints file pins the installed
# versions so pip can neither replace nor "upgrade" them while resolving megatron-core and this package.
RUN pip freeze | grep -iE '^(torch|transformer[-_]engine[^=]*|apex|numpy)==' > /tmp/keep.txt \
 && pip install --no-cache-dir -c /tmp/keep.txt "megatron-core>=0.16.1,<0.17" sentencepiece nltk tqdm \
        transformers safetensors matplotlib \
 && pip install --no-cache-dir --no-deps -e . \
 && python -c "import torch, megatron.core, megatron_anchor; print('torch', torch.__version__)"

ENV PYTHONUNBUFFERED=1
