"""Evaluation of trained or converted models: the bf16 RoPE deviation diagnostic and passkey retrieval.

The command-line tools are ``tools/bf16_rope_deviation.py`` and ``tools/eval_passkey.py``.
"""

from megatron_anchor.evaluation.loading import (
    build_eval_model,
    build_eval_parser,
    finish_model_args,
    init_eval_distributed,
    load_weights,
)
from megatron_anchor.evaluation.passkey import (
    PasskeyPrompt,
    build_prompt,
    greedy_generate,
    last_token_logits,
    run_passkey_grid,
)
from megatron_anchor.evaluation.rope_deviation import (
    PATHS,
    DeviationProbe,
    attach_probes,
    attention_probs,
    run_diagnostic,
)

__all__ = [
    "PATHS",
    "DeviationProbe",
    "PasskeyPrompt",
    "attach_probes",
    "attention_probs",
    "build_eval_model",
    "build_eval_parser",
    "build_prompt",
    "finish_model_args",
    "greedy_generate",
    "init_eval_distributed",
    "last_token_logits",
    "load_weights",
    "run_diagnostic",
    "run_passkey_grid",
]
