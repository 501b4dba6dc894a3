"""Prefill without padding for HF generate: a left-padded batch is prefilled packed (all rows laid
end to end, each attending to itself) or in length buckets, and then decoded together.

HF generate left-pads a batch to its longest prompt. A scaffolded rollout batch mixes rows that
carry the whole rubric with rows that carry none, so a single call prefills every row at the
length of the longest scaffold, and builds and applies a quadratic padding mask; the prefill
(every token through every layer) is most of a CPU generation call's time for a real model.
`unpadded_prefill` computes the prompt's KV cache without that padding, lays it out as
generate's left-padded cache, and lets generate decode all rows in one batch: decoding (one
token per row per step, where a call's fixed cost lies) is shared, and the sampling RNG is drawn
in the same batch shape as a single call.

- packed (`prefill_packed`): one forward over the concatenated real tokens, attention per row
  (`models.attention.packed_rows`), in place of generate's own prefill forward; no padded token
  is computed. Needs the project's CPU attention (`models.attention.use_cpu_sdpa`, which the
  loaders switch on) and plain full-attention layers.
- buckets (`prefill_in_buckets`): up to k forwards over all but the last column, one per length
  bucket, each padded to its own longest row; works with any attention implementation (e.g. on
  a GPU), at one forward per bucket plus generate's forward over the last column.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence


def length_buckets(lengths: Sequence[int], max_buckets: int) -> list[list[int]]:
    """Row indices split into at most `max_buckets` batches that minimise padded prompt tokens.

    A batch costs (rows x its longest prompt) under left-padding. Rows sorted by length are cut
    into contiguous runs by dynamic programming (exact optimum); the fewest batches reaching the
    optimum are used, so rows of equal length are never split for nothing. Within a batch rows
    keep their original order; batches come shortest first.
    """
    import numpy as np

    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    L = np.array([lengths[i] for i in order], dtype=np.int64)
    k = max(1, min(int(max_buckets), n))
    # best[c][j]: least cost of the first j sorted rows in c batches; cut[c][j]: start of the last
    best = np.full((k + 1, n + 1), np.iinfo(np.int64).max // 4, dtype=np.int64)
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0
    starts = np.arange(n + 1)
    for c in range(1, k + 1):
        for j in range(1, n + 1):
            cost = best[c - 1, :j] + (j - starts[:j]) * L[j - 1]
            i = int(np.argmin(cost))
            best[c, j], cut[c, j] = cost[i], i
    c = int(np.argmin(best[1:, n])) + 1  # argmin takes the first, i.e. the fewest batches
    bounds, j = [], n
    while c > 0:
        i = int(cut[c, j])
        bounds.append((i, j))
        j, c = i, c - 1
    return [sorted(order[i:j]) for i, j in reversed(bounds)]


PREFILL_MODES = ("packed", "buckets", "padded")


@dataclass
class PrefillRecord:
    """What the last generate call under `unpadded_prefill` did: the mode that ran (`padded`: a
    plain call), the rows of each prefill forward, and why it fell back to a plain call, if so."""

    mode: str = "padded"
    bucket_sizes: list[int] = field(default_factory=list)
    fallback: str | None = None


def _left_padded_lengths(input_ids, attention_mask) -> tuple[list[int] | None, str]:
    """Each row's prompt length, or None and why the batch cannot be prefilled apart."""
    import torch

    mask = attention_mask.to(torch.long)
    width = input_ids.shape[1]
    if width < 2:
        return None, "prompts of one token"
    if not torch.equal(mask, (torch.arange(width, device=mask.device) >= width - mask.sum(-1, keepdim=True)).long()):
        return None, "batch is not left-padded"
    return mask.sum(-1).tolist(), ""


def _plain_cache_layers(cache) -> str | None:
    """Why `cache` cannot be laid out row by row (None: a DynamicCache of plain layers)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return f"cache type {type(cache).__name__} (only plain DynamicCache layers are merged)"
    return None


def _full_attention_only(model) -> str | None:
    """Why per-row causal attention would not be this model's attention (None: it would be)."""
    from ruscarl_lib.models.attention import NAME, uses_cpu_sdpa

    config = getattr(model, "config", None)
    if not uses_cpu_sdpa(model):
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} (packing needs {NAME!r})"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(config, "use_sliding_window", False):
        return f"layer types {sorted(kinds)} (packing needs full attention in every layer)"
    return None


def packed_prefill_blocked_by(model) -> str | None:
    """What about a CPU model (not about a batch) keeps `prefill_packed` from running, or None:
    its attention implementation or its layer types. The trainer warns at start-up, since every
    batch would otherwise fall back without a word. Off the CPU packing is off by design (None)."""
    device = getattr(model, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        return None
    return _full_attention_only(model)


def prefill_packed(model, input_ids, attention_mask):
    """The KV cache of a whole left-padded batch and each row's next-token logits, from one forward
    over its real tokens laid end to end; `(cache, logits of shape (rows, 1, vocab))`, or
    `(None, reason)` where this model or batch cannot take it (then generate prefills as usual).

    Each row restarts its position ids at 0 and attends only to itself, so its keys, values and
    logits are those of the row prefilled alone (up to the rounding of matrix products of
    another shape). Padding columns of the cache stay zero; the attention mask hides them. A
    batch without padding is left to the plain prefill.
    """
    import torch

    from ruscarl_lib.models.attention import packed_rows

    if input_ids.device.type != "cpu":
        return None, f"device {input_ids.device.type} (packing runs on CPU)"
    reason = _full_attention_only(model)
    if reason:
        return None, reason
    lengths, reason = _left_padded_lengths(input_ids, attention_mask)
    if lengths is None:
        return None, reason
    if len(set(lengths)) == 1:
        return None, "no padding to remove"
    if min(lengths) < 1:
        return None, "a row without tokens"
    real = attention_mask.bool()  # row-major: row 0's tokens, then row 1's, ...
    ids = input_ids[real].unsqueeze(0)
    sizes = torch.tensor(lengths, device=ids.device)
    ends = sizes.cumsum(0)
    positions = (torch.arange(ids.shape[1], device=ids.device) - (ends - sizes).repeat_interleave(sizes)).unsqueeze(0)
    last = ends - 1  # each row's last token, packed
    with torch.no_grad(), packed_rows(lengths):
        try:
            out = model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=last)
        except TypeError as exc:  # a forward without `logits_to_keep`: full logits would cost more than padding
            return None, f"forward does not take logits_to_keep ({exc})"
    if tuple(out.logits.shape[:2]) != (1, len(lengths)):  # a forward that reads logits_to_keep as a count
        return None, f"forward kept logits of shape {tuple(out.logits.shape)} for {len(lengths)} rows"
    cache = out.past_key_values
    reason = _plain_cache_layers(cache)
    if reason:
        return None, reason
    rows, columns = real.nonzero(as_tuple=True)  # where each packed token goes, in packed order
    for layer in cache.layers:
        for name in ("keys", "values"):
            packed = getattr(layer, name)  # (1, kv heads, tokens, head dim)
            laid = packed.new_zeros((len(lengths), packed.shape[1], input_ids.shape[1], packed.shape[-1]))
            laid[rows, :, columns] = packed[0].transpose(0, 1)
            setattr(layer, name, laid)
    return cache, out.logits.transpose(0, 1)


def prefill_in_buckets(model, input_ids, attention_mask, max_buckets: int):
    """The KV cache of all but the last column of a left-padded batch, computed in at most
    `max_buckets` length buckets; `(cache, bucket sizes)`, or `(None, reason)` where this model
    or batch cannot take it (then generate runs as one batch).

    Each bucket is cut to its own longest row and gets the position ids generate would give it
    (count of real tokens before each one), so a row's cache holds the same keys and values as
    in a single padded prefill, up to the floating-point effect of the different batch shapes.
    Padding columns stay zero; the attention mask hides them.
    """
    import torch

    lengths, reason = _left_padded_lengths(input_ids, attention_mask)
    if lengths is None:
        return None, reason
    mask = attention_mask.to(torch.long)
    width = input_ids.shape[1]
    buckets = length_buckets(lengths, max_buckets)
    if len(buckets) < 2:
        return None, "one bucket already minimises padding"
    merged = None
    cache = None
    with torch.no_grad():
        for rows in buckets:
            n = max(lengths[i] for i in rows)
            if n < 2:
                continue  # nothing before the last column: the cache stays padding for these rows
            index = torch.tensor(rows, device=input_ids.device)
            ids, bmask = input_ids[index, width - n: width - 1], mask[index, width - n: width - 1]
            positions = (bmask.cumsum(-1) - 1).clamp(min=0)
            try:
                out = model(input_ids=ids, attention_mask=bmask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
            except TypeError as exc:  # a forward without `logits_to_keep`: full logits would cost more than padding
                return None, f"forward does not take logits_to_keep ({exc})"
            part = out.past_key_values
            reason = _plain_cache_layers(part)
            if reason:
                return None, reason
            if merged is None:
                cache = part
                merged = [[layer.keys.new_zeros((len(lengths), *layer.keys.shape[1:2], width - 1, layer.keys.shape[-1])),
                           layer.values.new_zeros((len(lengths), *layer.values.shape[1:2], width - 1, layer.values.shape[-1]))]
                          for layer in part.layers]
            for (keys, values), layer in zip(merged, part.layers):
                keys[index, :, width - n:] = layer.keys
                values[index, :, width - n:] = layer.values
    if cache is None:
        return None, "prompts of one token"
    for layer, (keys, values) in zip(cache.layers, merged):
        layer.keys, layer.values = keys, values
    return cache, [len(rows) for rows in buckets]


# generate's prefill stage (transformers 5.17), which the packed mode replaces for one call: a
# private method, so its presence and leading parameters are checked before it is relied on
_PREFILL_STAGE = ("input_ids", "generation_config", "model_kwargs")


def packed_prefill_unavailable() -> str | None:
    """Why this transformers' generate has no prefill stage the packed mode can replace (None: it
    has one); the trainer warns at start-up, and each call then falls back to a plain one."""
    import inspect

    import transformers
    from transformers import GenerationMixin

    stage = getattr(GenerationMixin, "_prefill", None)
    if stage is None:
        return f"transformers {transformers.__version__} has no GenerationMixin._prefill"
    params = [name for name in inspect.signature(stage).parameters if name != "self"]
    if tuple(params[: len(_PREFILL_STAGE)]) != _PREFILL_STAGE:
        return (f"transformers {transformers.__version__}: GenerationMixin._prefill takes {params}, "
                f"expected to start with {list(_PREFILL_STAGE)}")
    return None


def _generating_model(model):
    """The object whose `generate` runs the decoding loop (a PEFT wrapper's base model)."""
    from transformers import GenerationMixin

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner if isinstance(inner, GenerationMixin) else None


@contextmanager
def unpadded_prefill(model, mode: str = "packed", max_buckets: int = 1) -> Iterator[PrefillRecord]:
    """Within the block, `model.generate(input_ids=..., attention_mask=...)` prefills without
    padding and decodes all rows together; any other call, a batch the prefill cannot take, or
    mode `padded` runs unchanged. The record says which happened.

    packed: generate's prefill stage (`_prefill`: one forward over the prompt, giving the cache
    and the first token's logits) is replaced by `prefill_packed`, so the decoding loop, its
    sampling and its RNG draws are generate's own. buckets: the cache of all but the last column
    comes from `prefill_in_buckets` and is passed to generate, which then runs one forward over
    the last column before decoding.
    """
    if mode not in PREFILL_MODES:
        raise ValueError(f"prefill mode {mode!r}: expected one of {PREFILL_MODES}")
    record = PrefillRecord()
    plain = model.generate
    own = "generate" in vars(model)
    unavailable = packed_prefill_unavailable() if mode == "packed" else None
    inner = _generating_model(model) if mode == "packed" and not unavailable else None
    plain_prefill = inner._prefill if inner is not None else None
    own_prefill = inner is not None and "_prefill" in vars(inner)

    def packed_prefill_stage(input_ids, generation_config, model_kwargs, *args, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        cache = model_kwargs.get("past_key_values")
        extras = [name for name in ("output_attentions", "output_hidden_states", "prefill_chunk_size",
                                    "is_assistant") if getattr(generation_config, name, None)]
        if args or kwargs.get("is_first_iteration") is False or extras or "inputs_embeds" in model_kwargs:
            reason = f"generation options {extras or 'of another kind'}"
        elif cache is not None and cache.get_seq_length() > 0:
            reason = "a cache that is already filled"
        elif model_kwargs.get("attention_mask") is None:
            reason = "no attention mask"
        else:
            laid, logits = prefill_packed(model, input_ids, model_kwargs["attention_mask"])
            if laid is not None:
                record.mode, record.bucket_sizes = "packed", [input_ids.shape[0]]
                return CausalLMOutputWithPast(logits=logits, past_key_values=laid)
            reason = logits
        record.fallback = reason
        return plain_prefill(input_ids, generation_config, model_kwargs, *args, **kwargs)

    def generate(*args, **kwargs):
        record.mode, record.bucket_sizes, record.fallback = "padded", [], None
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if mode == "padded":
            return plain(*args, **kwargs)
        if args or ids is None or mask is None or kwargs.get("past_key_values") is not None:
            record.fallback = "not a plain input_ids/attention_mask call"
            return plain(*args, **kwargs)
        if mode == "packed":
            if inner is None:
                record.fallback = unavailable or "no transformers generate loop under this model"
                return plain(**kwargs)
            inner._prefill = packed_prefill_stage
            try:
                return plain(**kwargs)
            finally:
                if own_prefill:
                    inner._prefill = plain_prefill
                else:
                    del inner._prefill
        cache, info = prefill_in_buckets(model, ids, mask, max_buckets)
        if cache is None:
            record.fallback = info
            return plain(**kwargs)
        record.mode, record.bucket_sizes = mode, info
        return plain(**{**kwargs, "past_key_values": cache})

    model.generate = generate
    try:
        yield record
    finally:
        if own:
            model.generate = plain
        else:
            del model.generate
