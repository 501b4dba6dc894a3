"""One validated parameter schema for every notebook and script.

Params live in YAML files under `params/`. Every section forbids unknown keys so that a typo
(`alfa: 100`) fails loudly instead of silently running the default. Secrets never live here:
the judge section names the environment variable that holds the API key, not the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ruscarl_lib.common.paths import atomic_write_text


class ParamsError(ValueError):
    """A params file could not be read or did not validate; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataParams(_Section):
    """Where examples come from. No path means the embedded sample dataset."""

    path: str | None = Field(
        None, description="Dataset file (JSONL or verl parquet). Empty: the embedded sample."
    )
    path_env: str = Field(
        "RUSCARL_HEALTHBENCH", description="Environment variable that may hold the dataset path."
    )
    format: Literal["auto", "healthbench_jsonl", "verl_parquet", "ruscarl_jsonl"] = "auto"
    strict: bool = Field(True, description="Raise on the first bad row; False skips and reports.")
    limit: int | None = Field(None, ge=1, description="Use only the first N examples.")


class ScaffoldParams(_Section):
    """The scaffold schedule of METHOD.md section 4 and how the scaffold is rendered."""

    enabled: bool = True
    intra_group: Literal["linear", "binary"] = "linear"
    binary_k: int | None = Field(
        None, ge=0, description="Samples that get ratio 1 under `binary` (default: half the group)."
    )
    step_decay: Literal["sigmoid", "constant", "linear", "power"] = "sigmoid"
    alpha: float = Field(125.0, gt=0, description="Sigmoid steepness.")
    t0: float = Field(0.2, ge=0, le=1, description="Sigmoid midpoint as a fraction of training.")
    power: float = Field(2.0, gt=0, description="Exponent n of the `power` decay (1 - t)^n.")
    show_points: bool = True
    warn_no_reveal: bool = True
    in_loss: bool = Field(
        False, description="Ablation: keep the scaffold in the prompt the loss sees."
    )
    seed: int = 0


class JudgeServerParams(_Section):
    """A local `vllm serve` judge that a run, an evaluation or the demo starts for itself.

    When `start` is true the judge's `base_urls` and `model` are replaced by the started
    server's loopback address and `served_model_name` (see ruscarl_lib.judges.server).
    """

    start: bool = Field(False, description="Start a local vLLM judge server for this run.")
    model: str = Field("smollm2-135m-instruct", description="A registered local model, a folder or a hub id.")
    served_model_name: str | None = Field(None, description="Name clients ask for; None: `model`.")
    command: str | None = Field(
        None, description="The `vllm` executable; None: $RUSCARL_VLLM, then .venv-vllm/bin/vllm in "
        "the project, then `vllm` on PATH.")
    max_model_len: int = Field(2048, ge=128)
    dtype: str = Field("auto", description="vLLM --dtype; auto: float32 on a CPU without bfloat16 units "
                       "(AVX-512 BF16 or AMX), else vLLM's own choice.")
    kv_cache_gib: float = Field(2.0, gt=0, description="CPU build only: VLLM_CPU_KVCACHE_SPACE.")
    enforce_eager: bool = Field(True, description="Skip graph compilation (CPU start: ~70 s vs ~300 s).")
    threads: int | None = Field(None, ge=1, description="CPU threads for the server; None: vLLM's choice.")
    startup_timeout_s: float = Field(900.0, gt=0)
    extra_args: list[str] = Field(default_factory=list, description="More `vllm serve` arguments.")


class JudgeParams(_Section):
    """Who grades criteria. `rule` uses only rule verifiers; `openai` any compatible endpoint."""

    kind: Literal["openai", "rule"] = "rule"
    model: str = "Qwen/Qwen3-32B"
    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key)."
    )
    mode: Literal["per_criterion", "batched", "all"] = "per_criterion"
    criteria_per_call: int = Field(4, ge=1)
    max_concurrency: int = Field(32, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(20.0, ge=0)
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(1024, ge=1)
    structured_output: bool = True
    explanation_max_chars: int | None = Field(
        None, ge=1, description="Structured output only: cap the explanation's length in the JSON "
        "schema, so a small grader closes its answer before max_tokens cuts it (None: no cap).")
    failure_policy: Literal["exclude", "worst_case", "not_met"] = Field(
        "exclude", description="Evaluation: how a failed verdict is scored (exclude: left out)."
    )
    train_failure_policy: Literal["exclude", "worst_case", "not_met"] = Field(
        "worst_case",
        description="Training reward: worst_case counts a failed positive criterion not met and a "
        "failed negative one met, so making the judge fail never escapes a penalty.",
    )
    max_failure_rate: float = Field(
        0.1, ge=0, le=1,
        description="Training stops (checkpoint kept) when more than this share of criteria fail "
        "to be graded ...",
    )
    failure_patience: int = Field(5, ge=1, description="... in this many consecutive RL steps.")
    cache_path: str | None = Field("outputs/judge_cache.sqlite")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, description="Sampling seed sent to the judge server, if any.")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra request fields, e.g. {chat_template_kwargs: {enable_thinking: false}}.",
    )
    retry_temperature: float | None = Field(
        0.3, ge=0, description="Temperature for re-asking after unreadable output (None: same)."
    )
    routing: Literal["least_loaded", "round_robin"] = "least_loaded"
    endpoint_failures_before_cooldown: int = Field(3, ge=1)
    endpoint_cooldown_s: float = Field(30.0, ge=0)
    http_backend: Literal["auto", "httpx", "aiohttp"] = Field(
        "auto",
        description="aiohttp: a direct aiohttp client (least CPU); httpx: the openai client; "
        "auto: aiohttp when installed.",
    )
    strip_response_think: bool = Field(
        True, description="Grade the policy's answer without its <think> reasoning."
    )
    server: JudgeServerParams = Field(default_factory=JudgeServerParams)

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_env_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.replace("_", "").isalnum() or v[0].isdigit():
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
                f"not a key; got a value of length {len(v)}"
            )
        return v


class ScheduleViewParams(_Section):
    """Settings of the scaffold-tuning notebook's schedule view."""

    group_size: int = Field(8, ge=1)
    total_steps: int = Field(350, ge=1)


class SandboxParams(_Section):
    """The CPU sandbox: knobs of the synthetic world and of the tiny warm-started policy.

    Keys are the fields of `sandbox.WorldConfig` and `sandbox.PolicyConfig`; they are checked
    when the sandbox is prepared (an unknown key fails there, naming the key).
    """

    world: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    cache_dir: str = Field("outputs/sandbox", description="Where built policies are cached.")


class OutputParams(_Section):
    dir: str = "outputs"
    run_name: str = "run"


_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainParams(_Section):
    """GRPO training (METHOD.md section 6). Defaults follow the paper's Qwen2.5-7B-Instruct run.

    Step counts are RL steps: one step = one rollout batch of `prompts_per_step` prompts x
    `group_size` samples, used for `updates_per_step` x `num_iterations` optimizer updates.
    The run directory is `output.dir / output.run_name`.
    """

    # Model and backend
    model: str = Field(
        "Qwen/Qwen2.5-7B-Instruct", description="Model id or local path (never downloaded in tests)."
    )
    backend: Literal["auto", "unsloth", "transformers"] = Field(
        "auto", description="auto: Unsloth when CUDA is available and it imports, else transformers."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on a CUDA device that supports it, else float32."
    )
    load_in_4bit: bool = False
    fast_inference: bool = Field(False, description="Unsloth only: generate with its vLLM engine.")
    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="Share of GPU memory for vLLM (Unsloth fast_inference/colocate)."
    )
    gradient_checkpointing: bool = True
    finetune: Literal["lora", "full"] = Field(
        "lora", description="full: train every weight (tiny sandbox policies); lora for real models."
    )
    # LoRA (same meaning for both backends)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] = Field(default_factory=lambda: list(_LORA_TARGETS))
    # Batch geometry
    group_size: int = Field(8, ge=2, description="G: rollouts per prompt.")
    prompts_per_step: int = Field(64, ge=1, description="Distinct prompts per RL step, all processes.")
    updates_per_step: int = Field(
        1, ge=1, description="Optimizer updates per RL step (mini-batches; the paper uses 2)."
    )
    per_device_batch_size: int = Field(
        8, ge=1, description="Completions per forward/backward micro-batch on one process."
    )
    num_iterations: int = Field(1, ge=1, description="TRL's mu: passes over each rollout batch.")
    # Optimisation
    learning_rate: float = Field(1e-6, gt=0)
    lr_scheduler: str = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = Field(
        "adamw_torch_fused",
        description="transformers optimizer name; explicit so Unsloth's adamw_8bit default never applies.",
    )
    kl_coef: float = Field(1e-3, ge=0, description="beta; TRL's KL is the k3 estimator.")
    kl_log_ratio_cap: float | None = Field(
        None, gt=0,
        description="Cap c on the per-token log ratio log(ref/policy) inside the k3 estimate (TRL's loss path, "
                    "needs kl_coef > 0): beyond it the penalty is k3(c) and its gradient that of k3 at c, "
                    "bounded by e^c - 1 instead of growing as e^(log ratio). None: TRL's k3 unchanged.",
    )
    epsilon: float = Field(0.2, gt=0, description="Lower (and default upper) clip range.")
    epsilon_high: float | None = Field(None, gt=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = Field(
        "dapo", description="dapo = token mean over the accumulated batch (verl's token-mean)."
    )
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False
    truncated_mask: Literal["all", "positive"] = Field(
        "all",
        description="Which answers cut at the cap `mask_truncated_completions` leaves out of the loss: "
        "all (TRL's mask), or only those with a positive advantage, so a cut answer is never "
        "reinforced but one worse than its group is still pushed down (the cap is not absorbing).",
    )
    overlong_buffer: int = Field(
        0, ge=0,
        description="DAPO's soft overlong punishment: completions longer than max_completion_length "
        "minus this many tokens lose reward linearly, up to `overlong_penalty` at the cap; 0: off.",
    )
    overlong_penalty: float = Field(1.0, ge=0, description="Reward lost by a completion at the length cap.")
    # Sampling
    max_prompt_length: int = Field(
        2048, ge=1, description="Clean prompts longer than this are dropped before training."
    )
    max_completion_length: int = Field(4096, ge=1)
    max_scaffold_tokens: int = Field(
        1024, ge=0,
        description="Room a scaffold may add to a prompt (sizes the engine's context); examples whose "
        "full-rubric scaffold is longer are handled per `overlong_scaffold`.",
    )
    overlong_scaffold: Literal["drop", "error"] = Field(
        "drop", description="drop: leave such examples out (count logged); error: stop before training."
    )
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int = Field(20, ge=0, description="0 disables top-k.")
    rollout_prefill: Literal["packed", "buckets", "padded"] = Field(
        "packed",
        description=(
            "HF generate only: how a scaffolded rollout batch (left-padded, rows of different "
            "lengths) is prefilled before all its rows are decoded together. packed: one forward "
            "over the rows' real tokens laid end to end, each row attending only to itself, so no "
            "row is prefilled at the length of the longest scaffold and no padding mask is built "
            "(CPU with the project's attention, full-attention layers; elsewhere a plain call); "
            "buckets: at most `rollout_buckets` forwards, one per length bucket (any attention "
            "implementation, e.g. a GPU); padded: one plain generate call. Rows, groups, scaffold "
            "seeds, the rollout table and the sampling RNG stream are those of one call; tokens "
            "differ only where the prefill's floating-point sums move a logit (packed: each row's "
            "prefill equals the row's alone, to rounding). vLLM (and continuous batching) schedule "
            "sequences of any length without padding: ignored there, on Unsloth's rewritten "
            "trainer, and under ZeRO-3/FSDP. README 'What scaffolds cost per step' has the numbers."
        ),
    )
    rollout_buckets: int = Field(
        4,
        ge=1,
        description="Length buckets of `rollout_prefill: buckets` (fewest buckets that minimise "
        "padded prompt tokens, at most this many). Each bucket is one more prefill forward.",
    )
    # Generation backends
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    # Length of the run, checkpoints, logging
    max_steps: int = Field(350, ge=1, description="RL steps (the scaffold schedule's total_steps).")
    save_steps: int = Field(25, ge=1, description="Checkpoint the LoRA every N RL steps.")
    save_total_limit: int | None = Field(3, ge=1)
    resume: bool = Field(
        True,
        description="Continue from the run's last checkpoint if there is one; a folder trained with "
        "other settings (its fingerprint.json) is refused. false: start the folder afresh.",
    )
    logging_steps: int = Field(1, ge=1, description="In optimizer updates.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N RL steps (no scaffold).")
    num_generations_eval: int | None = Field(None, ge=1)
    log_rollouts: bool = Field(True, description="Write the per-rollout parquet table.")
    report_to: str = Field("none", description="TRL/transformers report_to (none, wandb, ...).")
    shuffle: bool = True
    seed: int | None = Field(None, description="Training seed; None: the top-level `seed`.")

    @property
    def masks_cut_gains_only(self) -> bool:
        """Whether only the cut answers with a positive advantage leave the loss (our mask in
        train.rollouts, in place of TRL's)."""
        return self.mask_truncated_completions and self.truncated_mask == "positive"

    @model_validator(mode="after")
    def _check_overlong_buffer(self) -> "TrainParams":
        if self.overlong_buffer >= self.max_completion_length:
            raise ValueError(f"overlong_buffer={self.overlong_buffer} must be below "
                             f"max_completion_length={self.max_completion_length}")
        if self.kl_log_ratio_cap is not None and self.kl_coef == 0:
            raise ValueError(f"kl_log_ratio_cap={self.kl_log_ratio_cap} caps the KL term, which kl_coef=0 turns off")
        if self.truncated_mask != "all" and not self.mask_truncated_completions:
            raise ValueError(f"truncated_mask={self.truncated_mask!r} needs "
                             "mask_truncated_completions: true (it says which cut answers are masked)")
        return self


class EvalParams(_Section):
    """Evaluation of a model (plus optional LoRA adapter) on a rubric set; never scaffolded.

    Sampling defaults follow the paper's rollout settings. `n_samples` > 1 draws M answers per
    prompt for Best-of-N and diversity; the headline score then averages all of them.
    """

    model: str | None = Field(None, description="Model id or local path; None: train.model.")
    adapter: str | None = Field(None, description="Trained weights: a LoRA adapter folder, a fully fine-tuned model "
                                 "folder, or a training run folder (its final weights); None: the base model only.")
    reference_model: str | None = Field(
        None, description="Initial model for novelty; None: the adapter disabled (needs `adapter`)."
    )
    embedding_model: str | None = Field(
        None, description="Local encoder for cosine diversity; None or missing offline: skipped."
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM when a GPU is present and vLLM imports, else transformers."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    data_path: str | None = Field(None, description="Eval set file; None: the `data` section.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")
    n_samples: int = Field(1, ge=1, description="M: answers sampled per prompt.")
    max_new_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.7, ge=0, description="0: greedy decoding.")
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int = Field(20, ge=0, description="0 disables top-k.")
    batch_size: int = Field(8, ge=1, description="Sequences per HF generate call.")
    chunk_prompts: int = Field(16, ge=1, description="Prompts per saved generation chunk (resume unit).")
    grade_chunk: int = Field(64, ge=1, description="Responses per saved verdict chunk (resume unit).")
    n_bootstrap: int = Field(1000, ge=0)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM only.")
    max_lora_rank: int = Field(64, ge=1, description="vLLM only: largest LoRA rank to serve.")
    seed: int | None = Field(None, description="Sampling seed; None: the top-level `seed`.")


class Params(_Section):
    """All parameters of the suite. Each notebook reads the sections it needs."""

    data: DataParams = Field(default_factory=DataParams)
    scaffold: ScaffoldParams = Field(default_factory=ScaffoldParams)
    schedule_view: ScheduleViewParams = Field(default_factory=ScheduleViewParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    output: OutputParams = Field(default_factory=OutputParams)
    sandbox: SandboxParams = Field(default_factory=SandboxParams)
    train: TrainParams = Field(default_factory=TrainParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    seed: int = 0

    @model_validator(mode="after")
    def _check_binary_k(self) -> "Params":
        k = self.scaffold.binary_k
        if k is not None and k > self.schedule_view.group_size:
            raise ValueError(
                f"scaffold.binary_k={k} exceeds schedule_view.group_size="
                f"{self.schedule_view.group_size}"
            )
        return self


def format_validation_error(err: ValidationError, source: str, what: str = "params") -> str:
    """One line per problem, each naming the dotted key: `scaffold.alfa: unknown key`."""
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown key")
        elif any("key" in str(part) for part in e["loc"]):
            # never echo what might be a secret pasted into the wrong place
            lines.append(f"  - {where}: {e['msg']}")
        else:
            lines.append(f"  - {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def params_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Params:
    """Validate a plain dict (for example notebook parameters) into Params."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None


def load_params(path: str | Path, overrides: dict[str, Any] | None = None) -> Params:
    """Read a params YAML file, apply dotted-key overrides (`{"scaffold.alpha": 50}`), validate."""
    path = Path(path)
    raw = read_yaml_mapping(path, "params file")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return params_from_dict(raw, source=str(path))


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with errors that name the file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def set_dotted(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `raw["a"]["b"] = value` for `dotted_key="a.b"`, creating sections as needed."""
    *parents, leaf = dotted_key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted_key!r}: {p!r} is not a section")
    node[leaf] = value


def save_params(params: Params, path: str | Path) -> Path:
    """Write params as YAML (atomically, so a reader never sees half a file)."""
    return atomic_write_text(path, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
