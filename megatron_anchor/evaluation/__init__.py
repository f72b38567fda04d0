"""Evaluation of trained or converted models: the bf16 RoPE deviation diagnostic and passkey retrieval.

The command-line tools are ``tools/bf16_rope_deviation.py`` and ``tools/eval_passkey.py``. Names are
imported on first use (PEP 562): the flags (``eval_args``) load without torch or megatron-core.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "build_eval_parser": "eval_args",
    "finish_model_args": "eval_args",
    "build_eval_model": "loading",
    "init_eval_distributed": "loading",
    "load_weights": "loading",
    "PasskeyPrompt": "passkey",
    "build_prompt": "passkey",
    "greedy_generate": "passkey",
    "last_token_logits": "passkey",
    "run_passkey_grid": "passkey",
    "PATHS": "deviation_grid",
    "DeviationProbe": "rope_deviation",
    "attach_probes": "rope_deviation",
    "attention_probs": "rope_deviation",
    "run_diagnostic": "rope_deviation",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
