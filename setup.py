"""megatron_anchor: long-context pretraining with AnchorAttention on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="megatron_anchor",
    version="0.1.0",
    description="AnchorAttention long-context pretraining on megatron-core",
    packages=find_packages(include=["megatron_anchor", "megatron_anchor.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Unpinned on purpose: NGC containers ship their own torch build, which must be kept.
        "torch>=2.6",
        "megatron-core>=0.16.1,<0.17",
        "einops",  # megatron-core's hierarchical CP groups (--cp-comm-type a2a+p2p) need it, undeclared
        "numpy",
        "sentencepiece>=0.2",
        "nltk>=3.8",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "ruff", "transformers", "safetensors", "matplotlib", "wandb==0.22.3"],
        "plot": ["matplotlib"],
        "hf": ["transformers", "safetensors"],
    },
)
