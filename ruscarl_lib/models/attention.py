"""SDPA attention that keeps grouped-query attention grouped when a padding mask is present (CPU).

Why: transformers' `sdpa` implementation repeats every key/value head to the query-head count
whenever an attention mask is passed (`repeat_kv`), because some GPU kernels cannot combine a mask
with `enable_gqa`. Scaffolded rollout batches are left-padded (rows carry different amounts of
rubric), so every decode step of HF generate copied the whole KV cache per layer; on CPU that copy
cost more than the attention itself. PyTorch's CPU kernels accept a mask together with
`enable_gqa=True` and give bit-identical outputs, so on CPU tensors this implementation passes
the mask and the grouped heads straight through. Only without autograd: the grouped backward
sums the head gradients in another order (differences of about 1e-4), and the loss forward must
stay bit-identical to stock so runs reproduce. Anything else (grad enabled, no mask, no GQA, CUDA
or other devices, position biases) goes to the stock `sdpa` function unchanged.
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_cpu_gqa"


def _forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
             is_causal=None, position_bias=None, **kwargs) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if (attention_mask is None or position_bias is not None or not grouped or query.device.type != "cpu"
            or torch.is_grad_enabled() or kwargs.get("output_attentions", False) or key.shape[-1] != value.shape[-1]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    return _grouped_sdpa(query, key, value, attention_mask, dropout, scaling), None


def _grouped_sdpa(query, key, value, attention_mask, dropout, scaling):
    import torch

    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=False,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous()


def register() -> str:
    """Make `NAME` a valid `attn_implementation` (idempotent); masks are built as for `sdpa`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, _forward)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return NAME


def use_cpu_gqa_attention(model) -> bool:
    """Switch a model that runs stock `sdpa` with grouped KV heads to `NAME`; True if switched.

    Only the CPU branch differs, so the switch is harmless for a model later moved to a GPU. The
    name is not saved with the model: `save_pretrained` writes no attention implementation.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if not heads or kv_heads >= heads:
        return False
    model.set_attn_implementation(register())
    return True
