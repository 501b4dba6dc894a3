"""Evaluate a model (plus optional LoRA adapter) on a rubric set from params: generate, grade,
report, each stage resumable on its own under one output folder (see `evaluate.folder`);
novelty and diversity of a finished evaluation on top.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ruscarl_lib.common.json_values import json_ready
from ruscarl_lib.common.paths import (
    atomic_write_parquet,
    atomic_write_text,
    resolve_path,
)
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.evaluate.generate import (
    SamplingConfig,
    generate_responses,
    load_eval_model,
    resolve_eval_backend,
)
from ruscarl_lib.evaluate.grade import grade_responses, grading_stats
from ruscarl_lib.evaluate.report import (
    EvalReport,
    build_report,
    response_scores,
)
from ruscarl_lib.train.run_folder import trained_weights

__all__ = [
    "run_evaluation",
    "run_novelty",
]


def _with_weights_resolved(ep: Any) -> Any:
    """`eval` with `adapter` naming the weights themselves: a training run folder becomes the
    final weights inside it (`adapter/` or `model/`, `train.run_folder.trained_weights`)."""
    if not ep.adapter:
        return ep
    return ep.model_copy(update={"adapter": str(trained_weights(resolve_path(ep.adapter)))})


def run_evaluation(
    params: Any,
    out_dir: str | Path,
    *,
    examples: Sequence[RubricExample] | None = None,
    judge: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Generate, grade and report as the `eval` section says; everything lands in `out_dir`.

    Anything passed in (examples, judge, loaded model) is used instead of what params name,
    which is how notebooks reuse a model and how tests inject fakes. Rerunning after an
    interruption resumes from the saved chunks.
    """
    ep = _with_weights_resolved(params.eval)
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if examples is None:
        examples = load_eval_examples(params)
    examples = list(examples)[: ep.limit] if ep.limit else list(examples)
    cfg = SamplingConfig.from_params(ep, params.seed)
    model_name = ep.model or params.train.model
    backend = resolve_eval_backend(ep.backend) if model is None else "transformers"
    if backend == "transformers" and model is None:
        model, tokenizer = load_eval_model(model_name, ep.adapter, dtype=ep.dtype)
    responses = generate_responses(
        examples, out, cfg, model=model, tokenizer=tokenizer, backend=backend, model_name=model_name,
        adapter=ep.adapter, overwrite=overwrite, progress=progress,
        vllm_options={"dtype": ep.dtype, "gpu_memory_utilization": ep.gpu_memory_utilization,
                      "max_lora_rank": ep.max_lora_rank},
    )
    atomic_write_parquet(out / "generations.parquet", responses)
    with contextlib.ExitStack() as servers:
        if judge is None:
            from ruscarl_lib.judges import (
                build_judge,  # written alongside; imported only when grading
            )
            from ruscarl_lib.judges.server import served_judge

            # judge.server.start: a local vLLM judge for this evaluation, stopped after grading
            judge_params, server = servers.enter_context(served_judge(params.judge, out))
            judge = build_judge(judge_params)
            if server is not None:
                server.attach(judge)
        verdicts = grade_responses(responses, examples, judge, out, chunk_size=ep.grade_chunk,
                                   overwrite=overwrite, progress=progress)
    atomic_write_parquet(out / "verdicts.parquet", verdicts)
    policy = params.judge.failure_policy
    scores = response_scores(verdicts, policy).merge(
        responses[["example_id", "sample_index", "n_tokens"]], on=["example_id", "sample_index"], how="left")
    atomic_write_parquet(out / "scores.parquet", scores)
    report = build_report(verdicts, responses, failure_policy=policy, n_bootstrap=ep.n_bootstrap,
                          seed=params.seed, judge_stats=grading_stats(out))
    report.extra.update({"model": model_name, "adapter": ep.adapter, "backend": backend,
                         "sampling": asdict(cfg)})
    report.save(out)
    return report


def load_eval_examples(params: Any) -> list[RubricExample]:
    """The evaluation set: `eval.data_path` when set, else the `data` section."""
    from ruscarl_lib.data.read import load_dataset_from_params

    data = params.data
    if params.eval.data_path:
        data = data.model_copy(update={"path": params.eval.data_path})
    return load_dataset_from_params(data)


def run_novelty(
    params: Any,
    out_dir: str | Path,
    *,
    examples: Sequence[RubricExample] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    initial: Any = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Likelihood ratios (trained / initial) and per-prompt diversity of saved generations.

    Reads `generations.parquet` of an evaluation in `out_dir`. The trained model is the base
    plus `eval.adapter` (or `model`); the initial model is `eval.reference_model` (or
    `initial`), else the same model with its adapter disabled. Writes novelty.parquet,
    diversity.parquet and novelty.json; returns the summary.
    """
    from ruscarl_lib.evaluate.novelty import (
        diversity_table,
        likelihood_ratios,
        load_embedder,
        novelty_summary,
    )

    ep = _with_weights_resolved(params.eval)
    out = resolve_path(out_dir)
    responses = pd.read_parquet(out / "generations.parquet")
    if examples is None:
        examples = load_eval_examples(params)
    by_id = {ex.id: ex for ex in examples}
    if model is None:
        if not ep.adapter and not ep.reference_model:
            raise ValueError("novelty compares a trained model with the initial one: set eval.adapter "
                             "(initial = adapter disabled) or eval.reference_model")
        model, tokenizer = load_eval_model(ep.model or params.train.model, ep.adapter, dtype=ep.dtype)
    if initial is None and ep.reference_model:
        initial, _ = load_eval_model(ep.reference_model, dtype=ep.dtype)
    elif initial is None and not hasattr(model, "disable_adapter"):
        # full weights (train.finetune: full): the initial model is the base model itself
        initial, _ = load_eval_model(ep.model or params.train.model, dtype=ep.dtype)
    prompts = [by_id[e].messages for e in responses["example_id"]]
    ids = [list(x) for x in responses["response_ids"]] if "response_ids" in responses else None
    ratios = likelihood_ratios(model, tokenizer, prompts, responses["response"].tolist(), initial=initial,
                               response_ids=ids, batch_size=batch_size)
    ratios.insert(0, "example_id", responses["example_id"].to_numpy())
    ratios.insert(1, "sample_index", responses["sample_index"].to_numpy())
    atomic_write_parquet(out / "novelty.parquet", ratios)
    summary: dict[str, Any] = {"novelty": novelty_summary(ratios["ratio"])}
    if responses.groupby("example_id").size().max() > 1:
        diversity = diversity_table(responses, embedder=load_embedder(ep.embedding_model))
        atomic_write_parquet(out / "diversity.parquet", diversity)
        summary["diversity"] = {
            "mean_diversity_bleu": float(diversity["diversity_bleu"].mean()),
            "mean_cosine_distance": float(diversity["cosine_distance"].mean())
            if diversity["cosine_distance"].notna().any() else None,
        }
    atomic_write_text(out / "novelty.json", json.dumps(json_ready(summary), indent=2))
    return summary
