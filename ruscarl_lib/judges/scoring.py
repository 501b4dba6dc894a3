"""Rubric scores: per example (the RL reward) and aggregated (the HealthBench number).

Per example (METHOD.md section 3):

    r = sum(points of met criteria, negatives included) / sum(positive points)

unclipped, so it can be negative or (never in practice) above 1. The benchmark number follows
OpenAI's simple-evals `healthbench_eval`: the mean of per-example scores clipped to [0, 1] as a
whole (not per example), with the std of that clipped mean over 1,000 bootstrap resamples.
With several sampled answers per prompt the bootstrap resamples prompts (all of a prompt's
answers together), since answers to one prompt are correlated.
Per-tag scores apply the same formula to the criteria carrying a tag (criterion tags) or reuse
the example's overall score (example tags).

A criterion whose verdict failed (`None`) counts as `failure_policy` says
(`judges.failure_policy`: exclude, worst_case, not_met).
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.data.tags import normalize_tags
from ruscarl_lib.judges.failure_policy import (
    FailurePolicy,
    check_policy,
    counted_met,
    is_failed,
)

VERDICT_COLUMNS: tuple[str, ...] = (
    "example_id",
    "criterion_index",
    "points",
    "met",
    "criterion_tags",
    "example_tags",
)

__all__ = [
    "VERDICT_COLUMNS",
    "AggregateScore",
    "aggregate_score",
    "example_score",
    "overall_score",
    "score_examples",
    "tag_scores",
    "verdict_table",
]


def example_score(
    points: Sequence[float],
    met: Sequence[bool | None],
    failure_policy: FailurePolicy = "exclude",
) -> float:
    """Rubric score of one response; NaN when no positive point is left to earn.

    NaN arises when the rubric has no positive criterion or, under `exclude`, when every
    positive criterion's verdict failed. Callers (and `aggregate_score`) skip NaN scores
    rather than invent a value for a response nobody could grade.
    """
    check_policy(failure_policy)
    if len(points) != len(met):
        raise ValueError(f"{len(points)} points but {len(met)} verdicts")
    earned = 0.0
    possible = 0.0
    for p, m in zip(points, met):
        p = float(p)
        hit = counted_met(p, m, failure_policy)
        if hit is None:
            continue
        if p > 0:
            possible += p
        if hit:
            earned += p
    if possible == 0:
        return float("nan")
    return earned / possible


@dataclass
class AggregateScore:
    """A benchmark number: clipped mean, its bootstrap std, and how many scores went in.

    `unclipped` is the plain mean of the per-response scores, which may be negative: the
    clipped score hides how far below zero a policy that trips negative criteria sits (two
    policies at clipped 0.0 can differ), so comparisons report both."""

    score: float
    std: float
    n: int
    unclipped: float = float("nan")


def aggregate_score(
    scores: Iterable[float], n_bootstrap: int = 1000, seed: int | None = 0,
    groups: Iterable[Any] | None = None,
) -> AggregateScore:
    """HealthBench aggregation: clip(mean, 0, 1) and the std of clipped bootstrap means.

    NaN scores (ungradable examples) are left out and `n` counts the scores used. The
    resampling uses a seeded numpy Generator so reported error bars reproduce.

    `groups` (one label per score, e.g. the prompt id) makes the bootstrap resample groups
    with all their scores together: several answers to one prompt are correlated (an easy
    prompt is easy for every sample), so resampling single responses would understate the
    spread. Without `groups` every score is its own group.
    """
    values = np.asarray(list(scores), dtype=np.float64)
    labels = None if groups is None else np.asarray(list(groups), dtype=object)
    if labels is not None and labels.size != values.size:
        raise ValueError(f"{values.size} scores but {labels.size} group labels")
    keep = ~np.isnan(values)
    values = values[keep]
    n = int(values.size)
    if n == 0:
        return AggregateScore(float("nan"), float("nan"), 0)
    unclipped = float(values.mean())
    score = float(np.clip(unclipped, 0.0, 1.0))
    if n_bootstrap < 1:
        return AggregateScore(score, float("nan"), n, unclipped)
    if labels is None:
        sums, counts = values, np.ones(n)
    else:
        inverse, _ = pd.factorize(labels[keep].astype(str))  # groups in order of appearance
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse).astype(np.float64)
    k = sums.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // k)  # bound memory for large evaluation sets
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        idx = rng.integers(0, k, size=(stop - start, k))
        means[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    std = float(np.std(np.clip(means, 0.0, 1.0)))
    return AggregateScore(score, std, n, unclipped)


# --------------------------------------------------------------------------------------------
# Verdict tables
# --------------------------------------------------------------------------------------------


def verdict_table(
    examples: Iterable[RubricExample],
    met_by_example: Mapping[str, Sequence[bool | None]],
    *,
    require_all: bool = True,
) -> pd.DataFrame:
    """One row per (example, criterion) with the judge's verdict, the input of all scoring.

    Verdicts are given in rubric order. With `require_all` every example must have verdicts;
    otherwise examples without any are left out. Verdicts for unknown ids always raise, as
    they signal a mix-up between datasets.
    """
    examples = list(examples)
    known = {ex.id for ex in examples}
    unknown = [k for k in met_by_example if k not in known]
    if unknown:
        raise KeyError(f"verdicts for unknown example ids: {unknown[:5]}")
    rows: list[dict[str, Any]] = []
    for ex in examples:
        if ex.id not in met_by_example:
            if require_all:
                raise KeyError(f"no verdicts for example {ex.id!r}")
            continue
        met = list(met_by_example[ex.id])
        if len(met) != len(ex.rubric):
            raise ValueError(
                f"example {ex.id!r}: {len(ex.rubric)} criteria but {len(met)} verdicts"
            )
        ex_tags = normalize_tags(ex.tags)
        for i, (c, m) in enumerate(zip(ex.rubric, met)):
            rows.append(
                {
                    "example_id": ex.id,
                    "criterion_index": i,
                    "points": float(c.points),
                    "met": None if is_failed(m) else bool(m),
                    "criterion_tags": normalize_tags(c.tags),
                    "example_tags": ex_tags,
                }
            )
    table = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    table["met"] = table["met"].astype(object)
    table["points"] = table["points"].astype(np.float64)
    table["criterion_index"] = table["criterion_index"].astype(np.int64)
    return table


def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in VERDICT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"verdict table lacks columns {missing}")


def _examples_of(table: pd.DataFrame):
    """(example_id, points, met, criterion_tags, example_tags) per example, in table order."""
    _check_table(table)
    groups: "OrderedDict[Any, list[int]]" = OrderedDict()
    for pos, ex_id in enumerate(table["example_id"].tolist()):
        groups.setdefault(ex_id, []).append(pos)
    points = table["points"].to_numpy(dtype=np.float64)
    met = table["met"].tolist()
    ctags = table["criterion_tags"].tolist()
    etags = table["example_tags"].tolist()
    for ex_id, rows in groups.items():
        yield (
            ex_id,
            [points[r] for r in rows],
            [met[r] for r in rows],
            [normalize_tags(ctags[r]) for r in rows],
            normalize_tags(etags[rows[0]]),
        )


def score_examples(table: pd.DataFrame, failure_policy: FailurePolicy = "exclude") -> pd.DataFrame:
    """Per-example scores (NaN when ungradable) and how many verdicts failed in each."""
    check_policy(failure_policy)
    out = [
        {
            "example_id": ex_id,
            "score": example_score(points, met, failure_policy),
            "n_failed": sum(is_failed(m) for m in met),
        }
        for ex_id, points, met, _, _ in _examples_of(table)
    ]
    return pd.DataFrame(out, columns=["example_id", "score", "n_failed"])


def overall_score(
    table: pd.DataFrame,
    failure_policy: FailurePolicy = "exclude",
    n_bootstrap: int = 1000,
    seed: int | None = 0,
    group_of: Callable[[Any], Any] | None = None,
) -> AggregateScore:
    """The headline benchmark number of a verdict table. `group_of(example_id)` names the
    bootstrap group of each row's example (the prompt, when rows are sampled answers)."""
    scored = score_examples(table, failure_policy)
    groups = None if group_of is None else [group_of(e) for e in scored["example_id"]]
    return aggregate_score(scored["score"], n_bootstrap=n_bootstrap, seed=seed, groups=groups)


def tag_scores(
    table: pd.DataFrame,
    failure_policy: FailurePolicy = "exclude",
    n_bootstrap: int = 1000,
    seed: int | None = 0,
    group_of: Callable[[Any], Any] | None = None,
) -> pd.DataFrame:
    """Aggregate score per tag, with the official HealthBench semantics (`group_of` as in
    `overall_score`).

    A criterion tag (axis:, cluster:, level:, ...) scores each example over only the criteria
    carrying it; examples where those criteria hold no positive points (after the failure
    policy) are skipped for that tag. An example tag (theme:, ...) takes the example's overall
    score. Each tag is then aggregated with `aggregate_score` over the examples it covers.
    """
    check_policy(failure_policy)
    per_tag: dict[str, list[float]] = defaultdict(list)
    per_group: dict[str, list[Any]] = defaultdict(list)
    for ex_id, points, met, ctags, etags in _examples_of(table):
        group = ex_id if group_of is None else group_of(ex_id)
        overall = example_score(points, met, failure_policy)
        if not math.isnan(overall):
            for tag in dict.fromkeys(etags):
                per_tag[tag].append(overall)
                per_group[tag].append(group)
        by_tag: dict[str, list[int]] = defaultdict(list)
        for i, tags in enumerate(ctags):
            for tag in dict.fromkeys(tags):
                by_tag[tag].append(i)
        for tag, idx in by_tag.items():
            s = example_score([points[i] for i in idx], [met[i] for i in idx], failure_policy)
            if not math.isnan(s):
                per_tag[tag].append(s)
                per_group[tag].append(group)
    rows = []
    for tag in sorted(per_tag):
        agg = aggregate_score(per_tag[tag], n_bootstrap=n_bootstrap, seed=seed,
                              groups=per_group[tag] if group_of is not None else None)
        rows.append({"tag": tag, "score": agg.score, "std": agg.std, "n": agg.n})
    return pd.DataFrame(rows, columns=["tag", "score", "std", "n"])
