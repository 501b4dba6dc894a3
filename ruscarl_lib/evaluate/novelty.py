"""Did training find answers the initial model would not give? Novelty and diversity measures.

Novelty (METHOD.md section 7): for each test response, the geometric mean over its tokens of
p_trained / p_initial, i.e. exp(mean over response tokens of log p_trained - log p_initial),
both models conditioned on the clean prompt rendered with the chat template. A ratio near 1
means the trained model only re-weighted what the initial one already said; the paper reports
a median of 2.19 after RuscaRL against 1.46 after plain rubric RL.

Diversity across the samples of one prompt guards against the opposite failure, collapse onto
one answer: 1 - self-BLEU (own implementation below; no BLEU package is a dependency) and,
where an embedding model is available offline, the mean pairwise cosine distance.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "RATIO_THRESHOLDS",
    "bleu_tokens",
    "diversity_table",
    "likelihood_ratios",
    "load_embedder",
    "mean_cosine_distance",
    "novelty_summary",
    "response_logprobs",
    "self_bleu",
    "sentence_bleu",
]

RATIO_THRESHOLDS: tuple[float, ...] = (2.0, 10.0, 100.0)


# --------------------------------------------------------------------------------------------
# Per-token likelihoods
# --------------------------------------------------------------------------------------------


def prompt_token_ids(tokenizer, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The clean prompt as the model sees it at generation time (chat template + assistant header)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _response_ids(tokenizer, response: str | None, ids: Sequence[int] | None) -> list[int]:
    """Response tokens without special tokens (EOS, padding): only what the answer says."""
    if ids is not None and len(ids) > 0:
        special = set(tokenizer.all_special_ids)
        return [int(t) for t in ids if int(t) not in special]
    return list(tokenizer(response or "", add_special_tokens=False).input_ids)


def response_logprobs(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict[str, Any]]],
    responses: Sequence[str] | None = None,
    *,
    response_ids: Sequence[Sequence[int] | None] | None = None,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """log p(token | clean prompt, earlier tokens) for every response token, per response.

    Give the responses as text, or as the token ids that generation produced (exact; text is
    re-tokenised otherwise). Sequences are left-padded with explicit position ids so that only
    the tail of the logits (the response positions) is materialised.
    """
    import torch

    n = len(prompts)
    if responses is None and response_ids is None:
        raise ValueError("give responses or response_ids")
    texts = list(responses) if responses is not None else [None] * n
    ids_in = list(response_ids) if response_ids is not None else [None] * n
    if len(texts) != n or len(ids_in) != n:
        raise ValueError("prompts, responses and response_ids must have the same length")
    pairs = [(prompt_token_ids(tokenizer, p), _response_ids(tokenizer, t, i)) for p, t, i in zip(prompts, texts, ids_in)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[np.ndarray] = [np.zeros(0)] * n
    order = sorted(range(n), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))  # less padding
    model_was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            batch = [k for k in order[start:start + batch_size] if pairs[k][1]]
            if not batch:
                continue
            seqs = [pairs[k][0] + pairs[k][1] for k in batch]
            width = max(len(s) for s in seqs)
            keep = max(len(pairs[k][1]) for k in batch) + 1
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                input_ids[row, width - len(s):] = torch.tensor(s)
                mask[row, width - len(s):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    logits_to_keep=keep,
                ).logits.float()
            # logits[:, j] predicts token width - keep + 1 + j; the response is the last L tokens
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, width - keep + 1:].to(device)
            token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu().numpy()
            for row, k in enumerate(batch):
                length = len(pairs[k][1])
                out[k] = token_logp[row, keep - 1 - length:].astype(np.float64)
    finally:
        model.train(model_was_training)
    return out


def likelihood_ratios(
    trained,
    tokenizer,
    prompts: Sequence[Sequence[dict[str, Any]]],
    responses: Sequence[str] | None = None,
    *,
    initial=None,
    response_ids: Sequence[Sequence[int] | None] | None = None,
    batch_size: int = 4,
) -> pd.DataFrame:
    """Per response: geometric-mean per-token likelihood ratio of `trained` over `initial`.

    With `initial=None`, `trained` must be a PEFT model: the initial model is the same base
    with its adapter disabled, so only one copy of the weights is held. Responses with no
    tokens get NaN. Columns: n_tokens, mean_logp_trained, mean_logp_initial, log_ratio, ratio.
    """
    lp_trained = response_logprobs(trained, tokenizer, prompts, responses, response_ids=response_ids, batch_size=batch_size)
    if initial is None:
        if not hasattr(trained, "disable_adapter"):
            raise ValueError("initial=None needs a PEFT model (its adapter is disabled for the initial model)")
        context: Any = trained.disable_adapter()
        initial = trained
    else:
        context = nullcontext()
    with context:
        lp_initial = response_logprobs(initial, tokenizer, prompts, responses, response_ids=response_ids, batch_size=batch_size)
    rows = []
    for a, b in zip(lp_trained, lp_initial):
        if a.size == 0:
            rows.append({"n_tokens": 0, "mean_logp_trained": math.nan, "mean_logp_initial": math.nan,
                         "log_ratio": math.nan, "ratio": math.nan})
            continue
        log_ratio = float(np.mean(a - b))
        rows.append({"n_tokens": int(a.size), "mean_logp_trained": float(a.mean()),
                     "mean_logp_initial": float(b.mean()), "log_ratio": log_ratio, "ratio": math.exp(log_ratio)})
    return pd.DataFrame(rows, columns=["n_tokens", "mean_logp_trained", "mean_logp_initial", "log_ratio", "ratio"])


def novelty_summary(ratios: Sequence[float] | pd.Series, thresholds: Sequence[float] = RATIO_THRESHOLDS) -> dict[str, float]:
    """Median ratio, mean log ratio, and how many responses exceed each threshold (NaN skipped)."""
    r = np.asarray(ratios, dtype=np.float64)
    r = r[~np.isnan(r)]
    out: dict[str, float] = {
        "n": int(r.size),
        "median_ratio": float(np.median(r)) if r.size else math.nan,
        "mean_log_ratio": float(np.mean(np.log(r))) if r.size else math.nan,
    }
    for t in thresholds:
        count = int((r > t).sum())
        out[f"n_above_{t:g}"] = count
        out[f"frac_above_{t:g}"] = count / r.size if r.size else math.nan
    return out


# --------------------------------------------------------------------------------------------
# Self-BLEU
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def bleu_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: BLEU compares surface wording."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(
    hypothesis: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 4,
    epsilon: float = 0.1,
) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (Papineni et al. 2002).

    Clipped n-gram precisions for n = 1..max_n, uniform weights, brevity penalty against the
    closest reference length (shorter on ties). Smoothing: an order with no matching n-gram
    counts `epsilon` matches instead of 0 (Chen & Cherry 2014, method 1), so one missing order
    does not zero the score. Orders longer than the hypothesis are left out of the mean.
    """
    c = len(hypothesis)
    if c == 0 or not references:
        return 0.0
    log_p = []
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        total = sum(hyp.values())
        if total == 0:
            break
        max_ref: Counter = Counter()
        for ref in references:
            for gram, cnt in _ngrams(ref, n).items():
                if cnt > max_ref[gram]:
                    max_ref[gram] = cnt
        matches = sum(min(cnt, max_ref[gram]) for gram, cnt in hyp.items())
        log_p.append(math.log((matches if matches > 0 else epsilon) / total))
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    log_bp = 0.0 if c > r else 1.0 - r / c
    return math.exp(log_bp + sum(log_p) / len(log_p))


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (Zhu et al. 2018); NaN for fewer than 2."""
    toks = [bleu_tokens(t) for t in texts]
    if len(toks) < 2:
        return math.nan
    scores = [sentence_bleu(h, toks[:i] + toks[i + 1:], max_n=max_n) for i, h in enumerate(toks)]
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------
# Embedding distance (optional)
# --------------------------------------------------------------------------------------------

Embedder = Callable[[Sequence[str]], np.ndarray]


def load_embedder(model_path: str | None, batch_size: int = 16, max_length: int = 512) -> Embedder | None:
    """A text -> unit-vector function from a local transformers encoder, or None.

    Mean-pools the last hidden state over real tokens. Only local files are read
    (`local_files_only`); when the model is missing offline this logs why and returns None,
    so callers skip the embedding measure instead of failing or downloading.
    """
    if not model_path:
        return None
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModel.from_pretrained(model_path, local_files_only=True)
    except Exception as err:  # offline, missing files, unknown architecture
        log.warning("embedding model %r unavailable offline (%s); cosine distance skipped", model_path, err)
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))

    return embed


def mean_cosine_distance(vectors: np.ndarray) -> float:
    """Mean of 1 - cos over all pairs of rows; NaN for fewer than 2 rows."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[0] < 2:
        return math.nan
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    sim = v @ v.T
    iu = np.triu_indices(v.shape[0], k=1)
    return float(np.mean(1.0 - sim[iu]))


def diversity_table(
    samples: pd.DataFrame,
    *,
    prompt_col: str = "example_id",
    text_col: str = "response",
    embedder: Embedder | None = None,
) -> pd.DataFrame:
    """Per prompt: number of samples, self-BLEU, 1 - self-BLEU and (with an embedder) cosine distance."""
    rows = []
    for prompt_id, group in samples.groupby(prompt_col, sort=False):
        texts = [str(t) for t in group[text_col].tolist()]
        sb = self_bleu(texts)
        cos = mean_cosine_distance(embedder(texts)) if embedder is not None and len(texts) > 1 else math.nan
        rows.append({prompt_col: prompt_id, "n_samples": len(texts), "self_bleu": sb,
                     "diversity_bleu": 1.0 - sb, "cosine_distance": cos})
    return pd.DataFrame(rows, columns=[prompt_col, "n_samples", "self_bleu", "diversity_bleu", "cosine_distance"])
