"""Conversion between Hugging Face Llama-family checkpoints and megatron_anchor's megatron-core model."""
