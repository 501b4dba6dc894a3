"""Which backend trains (Unsloth or plain transformers), and the policy it loads.

Unsloth must be imported before trl and transformers, so nothing here imports them at module
level; `prepare_backend` does the import, `load_policy` loads the model with its LoRA adapter
(or full weights when `finetune: full`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass
from typing import Any

from ruscarl_lib.common.backends import BackendUnavailable
from ruscarl_lib.models.local import resolve_model
from ruscarl_lib.params import (
    TrainParams,
)
from ruscarl_lib.train.config import cuda_available, torch_dtype_of

log = logging.getLogger(__name__)

BACKENDS = ("unsloth", "transformers")


def resolve_backend(tp: TrainParams) -> str:
    """`auto` means Unsloth when a GPU is present and Unsloth is installed, else transformers."""
    if tp.backend != "auto":
        return tp.backend
    if importlib.util.find_spec("unsloth") is not None and cuda_available():
        return "unsloth"
    return "transformers"


def prepare_backend(tp: TrainParams) -> str:
    """Resolve the backend and, for Unsloth, import it now: it patches trl and transformers on
    import and must come before them."""
    backend = resolve_backend(tp)
    if backend == "unsloth":
        from ruscarl_lib.train.checks import unsloth_failures_as_errors

        late = [m for m in ("trl", "transformers", "peft") if m in sys.modules]
        if late:
            log.warning("unsloth imported after %s; its patches may not apply fully", late)
        try:
            with unsloth_failures_as_errors():
                import unsloth  # noqa: F401
        except ImportError as err:
            raise BackendUnavailable(
                "backend 'unsloth' needs the GPU extra (pip install -e '.[gpu]', unsloth==2026.10.9); "
                f"import failed: {err}. Use backend: transformers on machines without it."
            ) from err
    return backend


def torch_float32():
    import torch

    return torch.float32


def lora_config(tp: TrainParams):
    """The PEFT LoRA config both backends share."""
    from peft import LoraConfig

    return LoraConfig(
        r=tp.lora_r,
        lora_alpha=tp.lora_alpha,
        lora_dropout=tp.lora_dropout,
        target_modules=list(tp.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


@dataclass
class Policy:
    """A loaded policy: the model, its tokenizer, and the LoRA config TRL still has to apply
    (None when the backend already wrapped the model, as Unsloth does)."""

    model: Any
    tokenizer: Any
    peft_config: Any
    backend: str


def load_policy(tp: TrainParams, *, seed: int, backend: str | None = None) -> Policy:
    """Load `tp.model` through the chosen backend, with the LoRA settings of `tp`."""
    backend = backend or prepare_backend(tp)
    if backend == "unsloth":
        return _load_unsloth(tp, seed)
    if backend == "transformers":
        return _load_transformers(tp)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def _load_unsloth(tp: TrainParams, seed: int) -> Policy:
    if tp.finetune != "lora":
        raise BackendUnavailable("train.finetune: full is supported with backend: transformers only")
    try:
        from unsloth import FastLanguageModel
    except ImportError as err:
        raise BackendUnavailable(f"backend 'unsloth' is not installed: {err}") from err
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolve_model(tp.model),
        max_seq_length=tp.max_prompt_length + tp.max_scaffold_tokens + tp.max_completion_length,
        # explicit, as for transformers (Unsloth's own default is bf16 even on CPU)
        dtype=torch_dtype_of(tp),
        load_in_4bit=tp.load_in_4bit,
        fast_inference=tp.fast_inference,
        max_lora_rank=tp.lora_r,
        gpu_memory_utilization=tp.gpu_memory_utilization,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=tp.lora_r,
        lora_alpha=tp.lora_alpha,
        lora_dropout=tp.lora_dropout,
        target_modules=list(tp.lora_target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if tp.gradient_checkpointing else False,
        random_state=seed,
    )
    tokenizer.padding_side = "left"
    return Policy(model=model, tokenizer=tokenizer, peft_config=None, backend="unsloth")


def _load_transformers(tp: TrainParams) -> Policy:
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.models.attention import use_cpu_sdpa
    from ruscarl_lib.models.tiny import load_tokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype_of(tp)}
    if tp.load_in_4bit:
        if not cuda_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise BackendUnavailable("load_in_4bit needs a CUDA GPU and bitsandbytes")
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    source = resolve_model(tp.model)  # a registered local model's folder, else as given
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    use_cpu_sdpa(model)  # padded rollout batches on CPU: grouped KV under a mask, packed prefill
    if tp.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=tp.gradient_checkpointing
        )
    if kwargs["dtype"] == torch_float32():
        # The marker Unsloth's loader sets for an explicit float32 request: were this model
        # trained by Unsloth's trainer (the forced-Unsloth CPU lane), it keeps float32 instead
        # of switching to fp16 mixed precision. Nothing else reads it.
        model._unsloth_user_float32 = True
    tokenizer = load_tokenizer(source, padding_side="left")
    peft_config = lora_config(tp) if tp.finetune == "lora" else None
    return Policy(model=model, tokenizer=tokenizer, peft_config=peft_config, backend="transformers")
