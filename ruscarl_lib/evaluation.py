"""Evaluate a model (plus optional LoRA adapter) on a rubric set: generate, grade, report.

Three stages, each resumable on its own, all writing under one output folder:

  generations/part-NNNNNN.parquet   answers, one chunk of prompts per file
  verdicts/part-NNNNNN.parquet      one row per (response, criterion), one chunk of responses per file
  generations.parquet, verdicts.parquet, scores.parquet, tag_scores.csv, report.json

A chunk file appears only complete (written under a temporary name, then renamed), so after
an interruption the finished chunks are kept and only missing ones are redone. A manifest per
stage records what produced the chunks (the weights by content hash, sampling, judge, dataset);
resuming with different settings, or new weights saved under the same adapter path, is refused
rather than silently reusing or mixing two evaluations (`overwrite=True` starts over).

Evaluation prompts are the clean conversations: scaffolds belong to training rollouts only
(METHOD.md section 4). The pure parts (grading a responses table with any Judge, building the
report) need no model, so they are tested without one; the model parts (HF generate on CPU or
GPU, vLLM on GPU, imported only when asked for) sit behind `generate_responses`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import numpy as np
import pandas as pd

from .backends import BackendUnavailable
from .paths import atomic_write_parquet, atomic_write_text, resolve_path
from .rubric import RubricExample
from .scoring import VERDICT_COLUMNS, FailurePolicy, overall_score, score_examples, tag_scores

log = logging.getLogger(__name__)

GENERATIONS_DIR = "generations"
VERDICTS_DIR = "verdicts"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"

GENERATION_COLUMNS = (
    "example_id", "sample_index", "response", "response_ids", "n_tokens", "truncated", "prompt_tokens",
)
VERDICT_ROW_COLUMNS = (
    "example_id", "sample_index", "criterion_index", "points", "met", "failed", "failure_kind",
    "source", "explanation", "criterion_tags", "example_tags",
)

__all__ = [
    "EvalReport",
    "EvalStateError",
    "SamplingConfig",
    "BackendUnavailable",
    "ChunkStore",
    "build_report",
    "eval_prompts",
    "generate_hf",
    "generate_responses",
    "generate_vllm",
    "grade_responses",
    "load_eval_model",
    "response_scores",
    "run_evaluation",
    "run_novelty",
]

T = TypeVar("T")


class EvalStateError(RuntimeError):
    """The output folder holds chunks from a different evaluation (other model, data or judge)."""


# --------------------------------------------------------------------------------------------
# Resumable chunk files
# --------------------------------------------------------------------------------------------


def _fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ChunkStore:
    """A folder of numbered parquet chunks plus a manifest naming what produced them.

    `open` refuses a folder whose manifest differs from `fingerprint` unless `overwrite`, in
    which case the old chunks are deleted. Chunks are written atomically, so a chunk that exists
    is complete; the stray temporary files of an interrupted write are removed on open.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], *, overwrite: bool = False) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / MANIFEST_FILE
        wanted = {"fingerprint": fingerprint, "hash": _fingerprint_hash(fingerprint)}
        if manifest.exists():
            found = json.loads(manifest.read_text())
            if found.get("hash") != wanted["hash"]:
                if not overwrite:
                    raise EvalStateError(
                        f"{self.dir} holds chunks made with other settings:\n  found  {found.get('fingerprint')}\n"
                        f"  wanted {fingerprint}\nUse another output folder or overwrite=True."
                    )
                for f in self.dir.glob("part-*.parquet"):
                    f.unlink()
        for tmp in self.dir.glob(".part-*.tmp"):
            tmp.unlink()
        atomic_write_text(manifest, json.dumps(wanted, indent=2, default=str))

    def path(self, index: int) -> Path:
        return self.dir / f"part-{index:06d}.parquet"

    def done(self) -> set[int]:
        return {int(f.stem.split("-")[1]) for f in self.dir.glob("part-*.parquet")}

    def write(self, index: int, frame: pd.DataFrame) -> Path:
        return atomic_write_parquet(self.path(index), frame)

    def read(self, indices: Iterable[int] | None = None) -> pd.DataFrame:
        wanted = sorted(self.done() if indices is None else indices)
        frames = [pd.read_parquet(self.path(i)) for i in wanted if self.path(i).exists()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """How answers are sampled. Part of the generation manifest, so a change forces a new run."""

    n_samples: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    batch_size: int = 8
    chunk_prompts: int = 16
    seed: int = 0

    @classmethod
    def from_params(cls, ep, seed: int) -> "SamplingConfig":
        return cls(
            n_samples=ep.n_samples, max_new_tokens=ep.max_new_tokens, temperature=ep.temperature,
            top_p=ep.top_p, top_k=ep.top_k, batch_size=ep.batch_size, chunk_prompts=ep.chunk_prompts,
            seed=ep.seed if ep.seed is not None else seed,
        )

    def sample_fingerprint(self) -> dict[str, Any]:
        """Settings that change the answers (batch size changes only speed on vLLM; kept anyway
        because HF sampling draws its random numbers per batch)."""
        return asdict(self)


def eval_prompts(examples: Sequence[RubricExample]) -> list[list[dict[str, str]]]:
    """The clean conversations, copied: evaluation never adds a scaffold."""
    return [[dict(m) for m in ex.messages] for ex in examples]


def _derived_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def _examples_fingerprint(examples: Sequence[RubricExample]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.id.encode())
        h.update(ex.conversation_key().encode())
    return h.hexdigest()[:16]


def load_eval_model(
    model: str,
    adapter: str | None = None,
    *,
    dtype: str = "auto",
    device: str | None = None,
):
    """(model, tokenizer) for inference: base weights plus the LoRA adapter when given.

    The tokenizer comes from the adapter folder when it holds one (training saves it there),
    else from the model. Left padding, as batched generation needs.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .tiny_model import load_tokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    source = _local_or_hub(model)
    adapter_dir = resolve_path(adapter) if adapter else None
    # a fully fine-tuned run (train.finetune: full) saves whole weights where an adapter would be
    full_weights = adapter_dir is not None and not (adapter_dir / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(adapter_dir) if full_weights else source, dtype=torch_dtype)
    if adapter_dir is not None and not full_weights:
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, str(adapter_dir))
    tok_source = source
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").exists():
        tok_source = str(adapter_dir)
    tokenizer = load_tokenizer(tok_source, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base.to(device)
    base.eval()
    return base, tokenizer


def _local_or_hub(name: str) -> str:
    """A registered local model's folder (ruscarl_lib.local_models), a path relative to the
    project root when such a folder exists, else a hub model id."""
    from .local_models import is_local_model, resolve_model

    if is_local_model(name):
        return resolve_model(name)
    local = resolve_path(name)
    return str(local) if local.exists() else name


def generate_hf(model, tokenizer, prompts: Sequence[Sequence[dict[str, str]]], cfg: SamplingConfig,
                seed: int) -> list[dict[str, Any]]:
    """`cfg.n_samples` answers per prompt with HF generate, `cfg.batch_size` sequences at a time.

    The RNG is seeded once per call, so a chunk regenerated after an interruption is identical.
    Answers are cut at the first end-of-turn token; `truncated` marks those that never ended.
    """
    import torch

    from .novelty import prompt_token_ids
    from .progress import emit

    eos_ids = {i for i in ([tokenizer.eos_token_id] + list(_as_list(getattr(model.generation_config, "eos_token_id", None))))
               if i is not None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [prompt_token_ids(tokenizer, p) for p in prompts]
    jobs = [(p, k) for p in range(len(prompts)) for k in range(cfg.n_samples)]
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
        if cfg.temperature > 0 else {"do_sample": False}
    )
    rows: list[dict[str, Any]] = []
    emit("generate", done=0, total=len(jobs), force=True)
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start:start + cfg.batch_size]
        seqs = [encoded[p] for p, _ in batch]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=sorted(eos_ids),
                **sampling,
            )
        for row, (p, k) in enumerate(batch):
            ids = out[row, width:].tolist()
            ended = next((j for j, t in enumerate(ids) if t in eos_ids), None)
            kept = ids if ended is None else ids[:ended]
            rows.append({
                "prompt_pos": p, "sample_index": k,
                "response": tokenizer.decode(kept, skip_special_tokens=True),
                "response_ids": kept, "n_tokens": len(kept), "truncated": ended is None,
                "prompt_tokens": len(seqs[row]),
            })
        emit("generate", done=len(rows), total=len(jobs), every_s=0.5, force=len(rows) == len(jobs))
    return rows


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple, set)) else [x]


def generate_vllm(
    model: str,
    prompts: Sequence[Sequence[dict[str, str]]],
    cfg: SamplingConfig,
    seeds: Sequence[int],
    *,
    adapter: str | None = None,
    engine: Any = None,
    dtype: str = "auto",
    gpu_memory_utilization: float = 0.85,
    max_lora_rank: int = 64,
) -> tuple[list[dict[str, Any]], Any]:
    """The same rows as `generate_hf`, from a vLLM engine (a GPU, or vLLM's CPU build). Returns
    (rows, engine) so the engine is built once and reused across chunks. One seed per prompt: answers do not depend
    on how prompts are grouped into chunks."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as err:
        raise BackendUnavailable(
            "eval backend 'vllm' needs the GPU extra (pip install -e '.[gpu]', vllm==0.33.0) and a "
            f"CUDA GPU; import failed: {err}. Set eval.backend: transformers to generate with HF."
        ) from err
    if engine is None:
        import torch

        engine = vllm.LLM(
            model=_local_or_hub(model), dtype=dtype, seed=cfg.seed, enable_lora=adapter is not None,
            max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization,
            # vLLM's CPU build: graph compilation took 246 s of a 250 s start for SmolLM2 on 2
            # cores; eager starts in about 60 s and generates the same tokens
            enforce_eager=not torch.cuda.is_available(),
        )
    params = [
        vllm.SamplingParams(
            n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
            top_k=cfg.top_k if cfg.top_k > 0 and cfg.temperature > 0 else -1, max_tokens=cfg.max_new_tokens,
            seed=s,
        )
        for s in seeds
    ]
    lora = LoRARequest("eval_adapter", 1, str(resolve_path(adapter))) if adapter else None
    outputs = engine.chat([list(p) for p in prompts], params, lora_request=lora, use_tqdm=False)
    rows = []
    for p, req in enumerate(outputs):
        for k, comp in enumerate(req.outputs):
            rows.append({
                "prompt_pos": p, "sample_index": k, "response": comp.text,
                "response_ids": list(comp.token_ids), "n_tokens": len(comp.token_ids),
                "truncated": comp.finish_reason == "length", "prompt_tokens": len(req.prompt_token_ids or []),
            })
    return rows, engine


def resolve_eval_backend(backend: str) -> str:
    """`auto`: vLLM when a CUDA GPU is present and vLLM imports, else transformers."""
    if backend != "auto":
        return backend
    import importlib.util

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_gpu = False
    return "vllm" if has_gpu and importlib.util.find_spec("vllm") is not None else "transformers"


def generate_responses(
    examples: Sequence[RubricExample],
    out_dir: str | Path,
    cfg: SamplingConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    backend: str = "transformers",
    model_name: str | None = None,
    adapter: str | None = None,
    vllm_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Answers for every example, `cfg.n_samples` each, saved in resumable chunks.

    `transformers`: pass a loaded `model` and `tokenizer` (see `load_eval_model`). `vllm`: pass
    `model_name` (and `adapter`); the engine is built on first use. Chunks already on disk are
    reused. Returns one row per answer in dataset order (columns GENERATION_COLUMNS).
    """
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"unknown generation backend {backend!r}")
    if backend == "transformers" and (model is None or tokenizer is None):
        raise ValueError("backend 'transformers' needs a loaded model and tokenizer")
    fingerprint = {
        "stage": "generate", "backend": backend, "weights": _weights_identity(backend, model, model_name, adapter),
        "sampling": cfg.sample_fingerprint(), "examples": _examples_fingerprint(examples),
    }
    store = ChunkStore(Path(out_dir) / GENERATIONS_DIR, fingerprint, overwrite=overwrite)
    prompts = eval_prompts(examples)
    chunks = _chunks(len(examples), cfg.chunk_prompts)
    todo = [k for k in range(len(chunks)) if k not in store.done()]
    engine = None
    bar = _progress(len(chunks), "generating", progress, initial=len(chunks) - len(todo), unit="chunk")
    try:
        for k in todo:
            positions = list(chunks[k])
            chunk_prompts = [prompts[i] for i in positions]
            if backend == "vllm":
                seeds = [_derived_seed(cfg.seed, i) for i in positions]
                rows, engine = generate_vllm(model_name or "", chunk_prompts, cfg, seeds, adapter=adapter,
                                             engine=engine, **(vllm_options or {}))
            else:
                rows = generate_hf(model, tokenizer, chunk_prompts, cfg, seed=_derived_seed(cfg.seed, k))
            frame = pd.DataFrame(rows)
            frame.insert(0, "example_id", [examples[positions[p]].id for p in frame.pop("prompt_pos")])
            store.write(k, frame[list(GENERATION_COLUMNS)])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return store.read(range(len(chunks))).reset_index(drop=True)


def _weights_identity(backend: str, model: Any, model_name: str | None, adapter: str | None) -> dict[str, Any]:
    """What the answers were generated from, by content: the loaded model's weights in memory
    (base plus adapter) for transformers, the files of the model and the adapter for vLLM (a
    hub id stays an id). Paths are not part of it: new weights saved under an old adapter
    path are a new evaluation, and a moved adapter is the same one."""
    from .fingerprint import model_identity, module_weights_digest

    if backend == "transformers" and model is not None:
        return {"model": "sha256:" + module_weights_digest(model)}
    return {"model": model_identity(model_name), "adapter": model_identity(adapter)}


def _progress(total: int, desc: str, enabled: bool, initial: int = 0, unit: str = "it"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit)


# --------------------------------------------------------------------------------------------
# Grading (pure: any Judge, no model)
# --------------------------------------------------------------------------------------------


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, also from inside a running loop (Jupyter kernels)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _verdict_rows(example: RubricExample, sample_index: int, verdicts: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (criterion, v) in enumerate(zip(example.rubric, verdicts)):
        rows.append({
            "example_id": example.id, "sample_index": int(sample_index), "criterion_index": i,
            "points": float(criterion.points), "met": None if v.failed else bool(v.met),
            "failed": bool(v.failed), "failure_kind": v.failure_kind, "source": v.source,
            "explanation": v.explanation, "criterion_tags": list(criterion.tags),
            "example_tags": list(example.tags),
            "prompt_tokens": int(v.prompt_tokens), "completion_tokens": int(v.completion_tokens),
            "latency_s": float(v.latency_s),
        })
    return rows


def _stats_dict(stats: Any) -> dict[str, Any]:
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats or {})


def _sum_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add JudgeStats dicts of several chunks: counts add, maxima take the max."""
    total: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                acc = total.setdefault(k, {})
                for kk, vv in v.items():
                    acc[kk] = acc.get(kk, 0) + vv
            elif k.endswith("_max_s") or k == "max_in_flight":
                total[k] = max(total.get(k, 0), v)
            elif isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
    return total


def grade_responses(
    responses: pd.DataFrame,
    examples: Sequence[RubricExample],
    judge: Any,
    out_dir: str | Path | None = None,
    *,
    chunk_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (response, criterion) with the judge's verdict (columns VERDICT_ROW_COLUMNS+).

    The judge sees each example's clean conversation and full rubric. With `out_dir`, verdicts
    are saved per chunk of `chunk_size` responses under `verdicts/` together with that chunk's
    judge accounting, and chunks already there are not graded again.
    """
    by_id = {ex.id: ex for ex in examples}
    missing = sorted(set(responses["example_id"]) - set(by_id))
    if missing:
        raise KeyError(f"responses for unknown example ids: {missing[:5]}")
    responses = responses.reset_index(drop=True)
    chunks = _chunks(len(responses), chunk_size)
    store = None
    if out_dir is not None:
        key = hashlib.sha256()
        for r in responses[["example_id", "sample_index", "response"]].itertuples(index=False):
            key.update(json.dumps([r.example_id, int(r.sample_index), r.response]).encode())
        fingerprint = {"stage": "grade", "judge": judge.fingerprint(), "responses": key.hexdigest()[:16],
                       "chunk_size": chunk_size}
        store = ChunkStore(Path(out_dir) / VERDICTS_DIR, fingerprint, overwrite=overwrite)
    done = store.done() if store is not None else set()
    todo = [k for k in range(len(chunks)) if k not in done]
    results: dict[int, pd.DataFrame] = {}

    async def grade_all() -> None:
        from .judges.verdict import GradingItem

        try:
            for k in todo:
                part = responses.iloc[list(chunks[k])]
                items = [GradingItem(eval_prompts([by_id[r.example_id]])[0], str(r.response),
                                     list(by_id[r.example_id].rubric)) for r in part.itertuples()]
                before = judge.stats.copy()
                label = f"grading chunk {k + 1}/{len(chunks)}" if progress else False
                verdicts = await judge.grade_many(items, progress=label)
                spent = judge.stats.since(before)
                rows = [row for r, vs in zip(part.itertuples(), verdicts)
                        for row in _verdict_rows(by_id[r.example_id], r.sample_index, vs)]
                frame = _verdict_frame(rows)
                if store is not None:
                    atomic_write_text(store.dir / f"stats-{k:06d}.json", json.dumps(_stats_dict(spent), default=str))
                    store.write(k, frame)
                results[k] = frame
        finally:
            await judge.aclose()

    if todo:
        run_coroutine(grade_all)
    frames = [results[k] if k in results else pd.read_parquet(store.path(k)) for k in range(len(chunks))]  # type: ignore[union-attr]
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else _verdict_frame([])
    return _normalise_verdicts(table)


def _verdict_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = list(VERDICT_ROW_COLUMNS) + ["prompt_tokens", "completion_tokens", "latency_s"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["met"] = frame["met"].astype("boolean")
    return frame


def _normalise_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Same dtypes whether the table was just built or read back from parquet."""
    table = table.copy()
    table["met"] = table["met"].astype("boolean")
    for col in ("criterion_tags", "example_tags"):
        table[col] = [list(t) if t is not None else [] for t in table[col]]
    return table


def grading_stats(out_dir: str | Path) -> dict[str, Any]:
    """Judge accounting summed over every saved verdict chunk (all sessions of a resumed run)."""
    folder = Path(out_dir) / VERDICTS_DIR
    done = {f.stem.split("-")[1] for f in folder.glob("part-*.parquet")}
    parts = [json.loads(f.read_text()) for f in sorted(folder.glob("stats-*.json")) if f.stem.split("-")[1] in done]
    return _sum_stats(parts)


def verdict_samples(out_dir: str | Path, examples: Sequence[RubricExample], n_answers: int = 1,
                    text_chars: int = 90) -> pd.DataFrame:
    """What the judge said about the first `n_answers` answers, criterion by criterion: the
    criterion text (shortened), its points, the verdict or failure kind, the judge's explanation,
    and its cost, so a report shows whether verdicts look right, not only how many failed."""
    out = Path(out_dir)
    verdicts = pd.read_parquet(out / "verdicts.parquet")
    by_id = {ex.id: ex for ex in examples}
    answers = verdicts[["example_id", "sample_index"]].drop_duplicates().head(n_answers)
    picked = verdicts.merge(answers, on=["example_id", "sample_index"])

    def short(text: str) -> str:
        return text if len(text) <= text_chars else text[: text_chars - 1] + "…"

    rows = []
    for r in picked.itertuples():
        ex = by_id.get(r.example_id)
        criterion = ex.rubric[int(r.criterion_index)].text if ex is not None else "?"
        rows.append({"example_id": r.example_id, "sample": int(r.sample_index), "criterion": short(criterion),
                     "points": r.points, "verdict": f"failed ({r.failure_kind})" if r.failed else ("met" if r.met else "not met"),
                     "explanation": short(r.explanation or ""), "source": r.source,
                     "tokens": int(r.prompt_tokens + r.completion_tokens), "latency_s": round(float(r.latency_s), 2)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Report (pure)
# --------------------------------------------------------------------------------------------


def _scoring_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The scoring module's verdict table, one pseudo-example per response (`id#k`)."""
    table = pd.DataFrame({
        "example_id": verdicts["example_id"].astype(str) + "#" + verdicts["sample_index"].astype(int).astype(str),
        "criterion_index": verdicts["criterion_index"].astype(np.int64),
        "points": verdicts["points"].astype(np.float64),
        "met": [None if pd.isna(m) else bool(m) for m in verdicts["met"]],
        "criterion_tags": [tuple(t) for t in verdicts["criterion_tags"]],
        "example_tags": [tuple(t) for t in verdicts["example_tags"]],
    }, columns=list(VERDICT_COLUMNS))
    table["met"] = table["met"].astype(object)
    return table


def response_scores(verdicts: pd.DataFrame, failure_policy: FailurePolicy = "exclude") -> pd.DataFrame:
    """Per response: example_id, sample_index, unclipped rubric score (NaN: ungradable), n_failed."""
    if verdicts.empty:
        return pd.DataFrame(columns=["example_id", "sample_index", "score", "n_failed"])
    scored = score_examples(_scoring_table(verdicts), failure_policy)
    split = scored["example_id"].str.rsplit("#", n=1, expand=True)
    return pd.DataFrame({
        "example_id": split[0], "sample_index": split[1].astype(int),
        "score": scored["score"].to_numpy(), "n_failed": scored["n_failed"].to_numpy(),
    })


@dataclass
class EvalReport:
    """The numbers of one evaluation. `score`/`std` are HealthBench's clipped mean and its
    bootstrap std over all graded responses (resampling prompts with all their answers); `unclipped_score` the plain mean (negative when
    penalties outweigh points); `tags` holds every axis:/theme:/... score."""

    score: float
    std: float
    n_scored: int
    n_examples: int
    n_responses: int
    failure_policy: str
    tags: pd.DataFrame
    lengths: dict[str, float]
    verdicts: dict[str, Any]
    judge: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unclipped_score: float = float("nan")

    @property
    def axis_scores(self) -> pd.DataFrame:
        return self.tags[self.tags["tag"].str.startswith("axis:")].reset_index(drop=True)

    @property
    def theme_scores(self) -> pd.DataFrame:
        return self.tags[self.tags["tag"].str.startswith("theme:")].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN becomes None."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "tags"}
        d["tags"] = {r.tag: {"score": r.score, "std": r.std, "n": int(r.n)} for r in self.tags.itertuples()}
        return _clean(d)

    def save(self, out_dir: str | Path) -> Path:
        """report.json and tag_scores.csv, each written atomically."""
        out = Path(out_dir)
        atomic_write_text(out / "tag_scores.csv", self.tags.to_csv(index=False))
        return atomic_write_text(out / REPORT_FILE, json.dumps(self.to_dict(), indent=2, default=_jsonable))

    def summary(self) -> str:
        return (f"HealthBench score {100 * self.score:.1f} +- {100 * self.std:.1f} "
                f"(unclipped mean {100 * self.unclipped_score:.1f}; {self.n_scored} responses to {self.n_examples} prompts, failure policy {self.failure_policy})")


def _clean(x: Any) -> Any:
    """Recursively turn numpy scalars into Python ones and non-finite floats into None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _prompt_of(pseudo_id: str) -> str:
    return str(pseudo_id).rsplit("#", 1)[0]


def build_report(
    verdicts: pd.DataFrame,
    responses: pd.DataFrame,
    *,
    failure_policy: FailurePolicy = "exclude",
    n_bootstrap: int = 1000,
    seed: int | None = 0,
    judge_stats: dict[str, Any] | Any = None,
) -> EvalReport:
    """HealthBench score, per-tag scores, response lengths and judge accounting of one evaluation."""
    table = _scoring_table(verdicts) if len(verdicts) else pd.DataFrame(columns=list(VERDICT_COLUMNS))
    # rows are answers (`id#k`); the bootstrap resamples prompts, all their answers together
    agg = overall_score(table, failure_policy, n_bootstrap=n_bootstrap, seed=seed, group_of=_prompt_of)
    tags = tag_scores(table, failure_policy, n_bootstrap=n_bootstrap, seed=seed, group_of=_prompt_of)
    n_tokens = responses["n_tokens"].to_numpy(dtype=np.float64) if "n_tokens" in responses else np.array([])
    chars = responses["response"].astype(str).str.len().to_numpy(dtype=np.float64)
    lengths = {
        "mean_chars": float(chars.mean()) if chars.size else math.nan,
        "median_chars": float(np.median(chars)) if chars.size else math.nan,
        "mean_tokens": float(n_tokens.mean()) if n_tokens.size else math.nan,
        "max_tokens": float(n_tokens.max()) if n_tokens.size else math.nan,
        "truncated_frac": float(responses["truncated"].mean()) if "truncated" in responses and len(responses) else math.nan,
    }
    failed = verdicts["failed"].astype(bool) if "failed" in verdicts else verdicts["met"].isna()
    kinds = verdicts.loc[failed, "failure_kind"].fillna("unknown").value_counts().to_dict() if "failure_kind" in verdicts else {}
    verdict_counts = {
        "n": int(len(verdicts)), "n_failed": int(failed.sum()),
        "failed_frac": float(failed.mean()) if len(verdicts) else math.nan,
        "failures": {str(k): int(v) for k, v in kinds.items()},
        "met_frac": float(verdicts["met"].dropna().astype(bool).mean()) if verdicts["met"].notna().any() else math.nan,
    }
    return EvalReport(
        score=agg.score, std=agg.std, n_scored=agg.n, unclipped_score=agg.unclipped,
        n_examples=int(responses["example_id"].nunique()), n_responses=int(len(responses)),
        failure_policy=str(failure_policy), tags=tags, lengths=lengths, verdicts=verdict_counts,
        judge=_stats_dict(judge_stats),
    )


# --------------------------------------------------------------------------------------------
# The whole evaluation from params
# --------------------------------------------------------------------------------------------


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
    ep = params.eval
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
            from .judges import build_judge  # written alongside; imported only when grading
            from .judges.server import served_judge

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
    from .data_io import load_dataset_from_params

    data = params.data
    if params.eval.data_path:
        data = data.model_copy(update={"path": params.eval.data_path})
    return load_dataset_from_params(data)


# --------------------------------------------------------------------------------------------
# Novelty and diversity of a finished evaluation
# --------------------------------------------------------------------------------------------


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
    from .novelty import diversity_table, likelihood_ratios, load_embedder, novelty_summary

    ep = params.eval
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
    atomic_write_text(out / "novelty.json", json.dumps(_clean(summary), indent=2))
    return summary
