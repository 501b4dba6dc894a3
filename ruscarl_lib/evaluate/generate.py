"""Generating evaluation answers: HF generate (CPU or GPU) or vLLM, chunked and resumable.

Evaluation prompts are the clean conversations: scaffolds belong to training rollouts only
(METHOD.md section 4). The answers are keyed by the content of the weights that wrote them
(a hash), not by the adapter's path, so new weights saved under the same path are noticed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ruscarl_lib.common.backends import BackendUnavailable
from ruscarl_lib.common.paths import (
    resolve_path,
)
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.evaluate.folder import GENERATION_COLUMNS, GENERATIONS_DIR, ChunkStore


__all__ = [
    "SamplingConfig",
    "eval_prompts",
    "generate_hf",
    "generate_responses",
    "generate_vllm",
    "load_eval_model",
]


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


def chunk_ranges(n: int, size: int) -> list[range]:
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

    from ruscarl_lib.models.attention import use_cpu_sdpa
    from ruscarl_lib.models.tiny import load_tokenizer

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
    use_cpu_sdpa(base)  # left-padded evaluation batches on CPU: grouped KV under a mask, packed prefill
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
    """A registered local model's folder (ruscarl_lib.models.local), a path relative to the
    project root when such a folder exists, else a hub model id."""
    from ruscarl_lib.models.local import is_local_model, resolve_model

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

    from ruscarl_lib.common.progress import emit
    from ruscarl_lib.evaluate.novelty import prompt_token_ids

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
    chunks = chunk_ranges(len(examples), cfg.chunk_prompts)
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
    from ruscarl_lib.common.fingerprint import model_identity, module_weights_digest

    if backend == "transformers" and model is not None:
        return {"model": "sha256:" + module_weights_digest(model)}
    return {"model": model_identity(model_name), "adapter": model_identity(adapter)}


def _progress(total: int, desc: str, enabled: bool, initial: int = 0, unit: str = "it"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit)
