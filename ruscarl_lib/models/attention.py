"""SDPA attention for HF generate on CPU: grouped KV heads under a padding mask, and packed rows.

Two things stock `sdpa` does not do on CPU, both only without autograd (generation):

- **Grouped heads under a mask.** Transformers' `sdpa` repeats every key/value head to the
  query-head count whenever an attention mask is passed (`repeat_kv`), because some GPU kernels
  cannot combine a mask with `enable_gqa`. Scaffolded rollout batches are left-padded (rows
  carry different amounts of rubric), so every decode step copied the whole KV cache per layer;
  on CPU that copy cost more than the attention itself. PyTorch's CPU kernels take a mask
  together with `enable_gqa=True`, so the mask and the grouped heads go straight through, with
  outputs bit-identical to stock's.
- **Packed rows** (`packed_rows`). Within the block, a forward over one sequence made of several
  prompts laid end to end attends within each prompt only (causal SDPA per segment) and builds
  no mask at all. A batch's prefill then processes exactly its real tokens, with no padding and
  no quadratic mask; each prompt's keys and values are those of that prompt prefilled alone (up
  to the rounding of matrix products of another shape: mostly bit for bit, within 1e-6).

Only without autograd: the grouped backward sums the head gradients in another order
(differences of about 1e-4), and the loss forward must stay bit-identical to stock so runs
reproduce. Anything else (grad enabled, no mask, no GQA, CUDA or other devices, position
biases) goes to the stock `sdpa` function unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Sequence

NAME = "sdpa_cpu"

_SEGMENTS: ContextVar[tuple[int, ...] | None] = ContextVar("ruscarl_packed_rows", default=None)


@contextmanager
def packed_rows(lengths: Sequence[int]) -> Iterator[None]:
    """Forwards in the block take a batch of one sequence that is `lengths` prompts laid end to
    end (position ids restarting at 0 for each); every token attends only to earlier tokens of
    its own prompt. Any other attention call in the block is an error, never a silent mix."""
    lengths = tuple(int(n) for n in lengths)
    if not lengths or min(lengths) < 1:
        raise ValueError(f"packed rows need positive lengths, got {lengths}")
    token = _SEGMENTS.set(lengths)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def _forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
             is_causal=None, position_bias=None, **kwargs) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _SEGMENTS.get()
    if segments is not None:
        return _packed_sdpa(module, query, key, value, segments, dropout, scaling, position_bias, kwargs), None
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


def _packed_sdpa(module, query, key, value, segments, dropout, scaling, position_bias, kwargs):
    """Causal attention within each segment of a one-row batch; output laid out as sdpa's."""
    import torch

    total = sum(segments)
    problem = (
        "autograd is on" if torch.is_grad_enabled()
        else f"batch of {query.shape[0]} rows (one packed row expected)" if query.shape[0] != 1
        else f"{query.shape[2]} queries and {key.shape[2]} keys for {total} packed tokens (a cache in use?)"
        if query.shape[2] != total or key.shape[2] != total
        else "a sliding window" if kwargs.get("sliding_window") is not None
        else "a position bias" if position_bias is not None
        else "dropout" if dropout
        else "attention weights requested" if kwargs.get("output_attentions", False)
        else None
    )
    if problem:
        raise RuntimeError(f"packed rows cannot run this attention call: {problem}")
    grouped = query.shape[1] != key.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = [sdpa(q, k, v, scale=scaling, is_causal=True, enable_gqa=grouped)
           for q, k, v in zip(query.split(segments, 2), key.split(segments, 2), value.split(segments, 2))]
    return torch.cat(out, 2).transpose(1, 2).contiguous()


def _mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
          mask_function=None, attention_mask=None, local_size=None, allow_is_causal_skip: bool = True, **kwargs):
    """Stock `sdpa` masks, built faster for a decode step and not at all for packed rows.

    A decode step's query comes after every cached position, so its causal mask is just the
    padding mask: that is returned directly (equal to stock's, a view instead of four broadcast
    ops per step). Packed rows need no mask: their attention is per segment.
    """
    import torch
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    if _SEGMENTS.get() is not None:
        return None
    mask_function = causal_mask_function if mask_function is None else mask_function
    if (q_length == 1 and mask_function is causal_mask_function and local_size is None
            and attention_mask is not None and attention_mask.dim() == 2 and kv_offset + kv_length - 1 <= q_offset):
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)[:, kv_offset:kv_offset + kv_length]
        padding = padding.to(device=kwargs.get("device", padding.device), dtype=torch.bool)
        if not (allow_is_causal_skip and bool(padding.all())):  # no padding: stock may skip the mask
            return padding[:, None, None, :].expand(batch_size, 1, 1, kv_length)
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask, local_size=local_size,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def register() -> str:
    """Make `NAME` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, _forward)
        AttentionMaskInterface.register(NAME, _mask)
    return NAME


def uses_cpu_sdpa(model) -> bool:
    """Whether `model` runs `NAME` (so `packed_rows` applies to its forwards)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME


def use_cpu_sdpa(model) -> bool:
    """Switch a model that runs stock `sdpa` to `NAME`; True if switched (or already on it).

    Only CPU generation differs, so the switch is harmless for a model later moved to a GPU. The
    name is not saved with the model: `save_pretrained` writes no attention implementation.
    """
    if uses_cpu_sdpa(model):
        return True
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(register())
    return True
