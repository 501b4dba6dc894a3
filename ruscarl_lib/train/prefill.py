"""Length buckets for left-padded generation: prefill short and long prompts apart, decode together.

HF generate left-pads a batch to its longest prompt. A scaffolded rollout batch mixes rows that
carry the whole rubric with rows that carry none, so a single call prefills every row at the
length of the longest scaffold; the prefill (quadratic attention, every token through every
layer) is most of a CPU generation call's time for a real model. `bucketed_prefill` runs that
prefill in a few length buckets, merges their KV caches into the left-padded layout generate
expects, and lets generate decode all rows in one batch: decoding (one token per row per step,
where a call's fixed cost lies) is shared, and the sampling RNG is drawn in the same batch shape
as a single call.
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


@dataclass
class PrefillRecord:
    """What the last bucketed generate call did: the bucket sizes (rows) it prefilled, or why
    it fell back to a plain call."""

    bucket_sizes: list[int] = field(default_factory=list)
    fallback: str | None = None


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
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    mask = attention_mask.to(torch.long)
    lengths = mask.sum(-1).tolist()
    width = input_ids.shape[1]
    if width < 2:
        return None, "prompts of one token"
    if not torch.equal(mask, (torch.arange(width, device=mask.device) >= width - mask.sum(-1, keepdim=True)).long()):
        return None, "batch is not left-padded"
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
            if not isinstance(part, DynamicCache) or any(type(layer) is not DynamicLayer for layer in part.layers):
                return None, f"cache type {type(part).__name__} (only plain DynamicCache layers are merged)"
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


@contextmanager
def bucketed_prefill(model, max_buckets: int) -> Iterator[PrefillRecord]:
    """Within the block, `model.generate(input_ids=..., attention_mask=...)` prefills in length
    buckets (`prefill_in_buckets`) and decodes from the merged cache; any other call, or a batch
    the prefill cannot take, runs unchanged. The record says which happened."""
    record = PrefillRecord()
    plain = model.generate
    own = "generate" in vars(model)

    def generate(*args, **kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if args or ids is None or mask is None or kwargs.get("past_key_values") is not None:
            record.fallback = "not a plain input_ids/attention_mask call"
            return plain(*args, **kwargs)
        cache, info = prefill_in_buckets(model, ids, mask, max_buckets)
        if cache is None:
            record.fallback = info
            return plain(**kwargs)
        record.bucket_sizes = info
        return plain(**{**kwargs, "past_key_values": cache})

    model.generate = generate
    try:
        yield record
    finally:
        if own:
            model.generate = plain
        else:
            del model.generate
