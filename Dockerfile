# megatron_anchor on an NGC PyTorch container (Python 3.12; torch, Transformer Engine, apex and NCCL preinstalled).
# Base tag: 25.04 (torch 2.7.0a0 >= 2.6 as megatron-core 0.16 requires; the image megatron-core's own install
# guide runs). Another tag: docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:YY.MM-py3 .
# Build:  docker build -t megatron_anchor .
# Run:    docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 -v /data:/data -it megatron_anchor
# Check:  docker run --gpus all --ipc=host megatron_anchor python benchmarks/gpu_check.py --out /data/gpu_check
# Slurm (pyxis/enroot): enroot import dockerd://megatron_anchor, then CONTAINER_IMAGE=... (examples/README.md).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

WORKDIR /workspace/megatron_anchor
COPY setup.py pyproject.toml README.md ./
COPY megatron_anchor ./megatron_anchor
COPY tools ./tools
COPY examples ./examples
COPY benchmarks ./benchmarks

# The container's torch, Transformer Engine and apex must be kept. NGC images (25.03+) export
# PIP_CONSTRAINT=/etc/pip/constraint.txt pinning every package of the image, which can refuse what
# megatron-core or transformers need (megatron-core's install guide unsets it); instead only the GPU stack is
# pinned to the installed versions. `pip list --format=freeze` prints name==version even for the image's
# locally built wheels, where `pip freeze` prints "name @ file://..." and the pin would silently be lost.
RUN pip list --format=freeze \
        | grep -iE '^(torch|torchvision|triton|pytorch[-_]triton|transformer[-_]engine[-_a-z0-9]*|apex|numpy)==' \
        > /tmp/keep.txt \
 && cat /tmp/keep.txt && grep -qi '^torch==' /tmp/keep.txt \
 && PIP_CONSTRAINT= pip install --no-cache-dir -c /tmp/keep.txt "megatron-core==0.16.1" sentencepiece nltk \
        tqdm transformers safetensors matplotlib \
 && PIP_CONSTRAINT= pip install --no-cache-dir --no-deps -e . \
 && python -c "import torch, megatron.core, megatron_anchor.model as m; print('torch', torch.__version__, \
'| megatron-core', megatron.core.__version__, '| TE importable at build time:', m.transformer_engine_available())"

ENV PYTHONUNBUFFERED=1
