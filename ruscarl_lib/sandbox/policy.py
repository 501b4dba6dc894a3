"""The sandbox's tiny local policy: word-level tokenizer, small transformer, SFT warm start.

Why: the bottleneck demo must run on two CPU cores with nothing downloaded, yet the training
code path should see an ordinary `PreTrainedModel` + fast tokenizer with a chat template. A
word-level vocabulary built from the world's text keeps sequences short (one token per word),
and a model of a few hundred thousand parameters learns hint-following in a couple of minutes.

The warm start is a plain supervised fine-tune (TRL's SFTTrainer, completion-only loss) on
`sft_data.sft_conversations`; the result is cached under `outputs/sandbox/policy-<key>/`, where
the key digests the world config, the policy config, the scaffold wording and a format version,
so any change that would alter the policy rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ruscarl_lib.common.paths import atomic_write_text, resolve_path
from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.scaffold.render import scaffold_text
from ruscarl_lib.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_model, load_tokenizer
from ruscarl_lib.sandbox.sft_data import OPENINGS, SFTDataConfig, sft_conversations
from ruscarl_lib.sandbox.world import World, WorldConfig, build_world

log = logging.getLogger(__name__)

__all__ = [
    "PolicyConfig",
    "SandboxPolicy",
    "build_word_tokenizer",
    "completion_logprob",
    "ensure_policy",
    "load_sandbox_policy",
    "policy_dir",
    "policy_key",
]

# Bump when the SFT data, tokenizer or model layout change in a way the configs do not show.
POLICY_FORMAT = 3  # 3: validation split and the repeat criterion
UNK_TOKEN = "<unk>"
DEFAULT_ROOT = "outputs/sandbox"
_DONE_FILE = "sandbox_policy.json"


@dataclass(frozen=True)
class PolicyConfig:
    """Model size, tokenizer and warm-start recipe.

    num_heads: few wide heads (32 dims each at the default width) learn content-based look-ups
      much faster than many narrow ones under rotary position embeddings.
    init_scale: std of the initial weights. The default 0.02 of large models leaves a model this
      narrow with tiny embeddings, and copying a hinted phrase then stays at chance for
      thousands of SFT steps; at 0.1 it is learnt within a few hundred.
    phrase_tokens: make each fixed world phrase (a condition statement, an advice, a remedy, a
      generic tip, ...) one token. It shortens sequences several-fold and turns following a
      hint into copying one token, which a two-layer model learns in a few hundred SFT steps on
      CPU; with False every word is a token and hint-following needs far more SFT compute.
      Either way the policy must learn which advice goes with which condition from reward.
    """

    arch: str = "qwen2"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    init_scale: float = 0.1
    sft: SFTDataConfig = field(default_factory=SFTDataConfig)
    epochs: float = 5.0
    learning_rate: float = 3e-3
    batch_size: int = 16
    warmup_ratio: float = 0.05
    max_length: int = 384
    phrase_tokens: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PolicyConfig":
        raw = dict(raw)
        raw["sft"] = SFTDataConfig(**raw.get("sft", {}))
        return cls(**raw)


@dataclass
class SandboxPolicy:
    """A loaded warm-started policy and where it came from."""

    model: Any
    tokenizer: Any
    path: Path
    config: PolicyConfig
    world_config: WorldConfig
    sft_seconds: float = float("nan")

    def for_training(self):
        """The policy in the form `train.run.run_training(policy=...)` takes (full fine-tune, no LoRA)."""
        from ruscarl_lib.train.backend import Policy

        return Policy(model=self.model, tokenizer=self.tokenizer, peft_config=None, backend="transformers")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def build_word_tokenizer(texts: Sequence[str], phrases: Sequence[str] = ()):
    """A lower-casing word-level fast tokenizer over `texts`, with the ChatML template.

    Words and runs of punctuation are tokens, and so is each of `phrases` as a whole (matched
    longest first, on word boundaries): the multi-word units a corpus-trained merge step
    would join. Decoding joins tokens with single spaces, so phrases survive a round trip
    word for word (what contains-phrase rules check).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # join words with one space
    trainer = trainers.WordLevelTrainer(special_tokens=[*SPECIAL_TOKENS, UNK_TOKEN], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    units = sorted({" ".join(p.lower().split()) for p in phrases if len(p.split()) > 1 or not p.isalnum()})
    tok.add_tokens([AddedToken(p, single_word=True, normalized=True) for p in units])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK_TOKEN,
        bos_token=None,
        padding_side="left",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _vocabulary_texts(world: World, sft_rows: list[dict[str, Any]]) -> list[str]:
    texts = list(world.texts())
    criteria: list[Criterion] = []
    for c in world.conditions:
        criteria += [c.advice_criterion(), c.harm_criterion()]
    for show_points in (True, False):
        texts.append(scaffold_text(criteria, show_points=show_points, warn_no_reveal=True))
    texts += [*OPENINGS, "also ,", "a common remedy is", "system user assistant"]
    for row in sft_rows:
        texts += [m["content"] for m in row["prompt"]] + [m["content"] for m in row["completion"]]
    return texts


def _phrase_units(world: World) -> list[str]:
    """The world's fixed multi-word phrases (tokenised whole when `phrase_tokens` is on)."""
    return [*world.phrases(), *OPENINGS]


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _scaffold_fingerprint() -> str:
    """Digest of the scaffold wording: if the renderer changes, the warm start must too."""
    probe = [Criterion("probe include", 3.0), Criterion("probe avoid", -2.0)]
    text = scaffold_text(probe, show_points=True) + "\x1f" + scaffold_text(probe, show_points=False)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _content_fingerprint(world: World, config: PolicyConfig) -> str:
    """Digest of the world's wording and of sample SFT rows: code edits that change the text
    the policy is trained on change the key even when no config field does."""
    probe = [world.phrases()]
    for c in world.conditions:
        probe.append([cr.to_dict() for cr in (c.advice_criterion(), c.harm_criterion())])
    probe.append([ex.to_dict() for ex in world.train[:4]])
    probe.append(sft_conversations(world, SFTDataConfig(**{**asdict(config.sft), "n_examples": 16})))
    return hashlib.blake2b(json.dumps(probe, sort_keys=True).encode(), digest_size=8).hexdigest()


def policy_key(world: World | WorldConfig, config: PolicyConfig) -> str:
    """Identity of a warm start: everything that can change the weights it produces."""
    world = build_world(world) if isinstance(world, WorldConfig) else world
    payload = {
        "format": POLICY_FORMAT,
        "world": world.config.to_dict(),
        "policy": config.to_dict(),
        "scaffold": _scaffold_fingerprint(),
        "content": _content_fingerprint(world, config),
    }
    return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=6).hexdigest()


def policy_dir(world: World | WorldConfig, config: PolicyConfig, root: str | Path | None = None) -> Path:
    return resolve_path(root or DEFAULT_ROOT) / f"policy-{policy_key(world, config)}"


def load_sandbox_policy(path: str | Path) -> SandboxPolicy:
    """Load a cached warm start (model in eval mode, float32).

    The tokenizer goes through `models.tiny.load_tokenizer`, as in training and evaluation: a
    plain `AutoTokenizer` would misread the word-level vocabulary.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    meta = json.loads((path / _DONE_FILE).read_text())
    tokenizer = load_tokenizer(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return SandboxPolicy(
        model=model,
        tokenizer=tokenizer,
        path=path,
        config=PolicyConfig.from_dict(meta["policy"]),
        world_config=WorldConfig(**meta["world"]),
        sft_seconds=float(meta.get("sft_seconds", float("nan"))),
    )


def ensure_policy(
    world: World | WorldConfig,
    config: PolicyConfig | None = None,
    *,
    root: str | Path | None = None,
    force: bool = False,
    threads: int | None = None,
) -> SandboxPolicy:
    """The warm-started policy for this world and config: from the cache, else built now."""
    config = config or PolicyConfig()
    world = build_world(world) if isinstance(world, WorldConfig) else world
    out = policy_dir(world, config, root)
    if not force and (out / _DONE_FILE).is_file():
        return load_sandbox_policy(out)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    seconds = _build(world, config, tmp, threads=threads)
    meta = {
        "key": out.name.removeprefix("policy-"),
        "world": world.config.to_dict(),
        "policy": config.to_dict(),
        "format": POLICY_FORMAT,
        "sft_seconds": seconds,
    }
    atomic_write_text(tmp / _DONE_FILE, json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return load_sandbox_policy(out)


def _build_model(tokenizer: Any, config: PolicyConfig):
    """`models.tiny.build_tiny_model` at this config, re-initialised at `init_scale`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = build_tiny_model(
        tokenizer,
        arch=config.arch,  # type: ignore[arg-type]
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        max_positions=max(512, config.max_length),
        seed=config.seed,
    )
    if config.init_scale != model.config.initializer_range:
        model.config.initializer_range = config.init_scale
        generation_config = model.generation_config
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        model.generation_config = generation_config
    return model


def _build(world: World, config: PolicyConfig, out: Path, threads: int | None) -> float:
    """Tokenizer + random model + SFT, saved to `out`; returns the SFT wall time."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from ruscarl_lib.common.progress import progress_callback
    from ruscarl_lib.train.trl_compat import install_logprob_fallback

    install_logprob_fallback()  # TRL's fused LM-head kernel needs Triton/CUDA
    if threads:
        torch.set_num_threads(threads)
    rows = sft_conversations(world, config.sft)
    phrases = _phrase_units(world) if config.phrase_tokens else ()
    tokenizer = build_word_tokenizer(_vocabulary_texts(world, rows), phrases)
    model = _build_model(tokenizer, config)
    set_seed(config.seed)
    args = SFTConfig(
        output_dir=str(out / "sft_run"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},  # copying can click late; keep learning
        warmup_steps=config.warmup_ratio,
        weight_decay=0.0,
        max_length=config.max_length,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,  # a progress bar while the warm start trains
        train_sampling_strategy="group_by_length",  # hinted and bare prompts differ a lot in length
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[progress_callback("sft")])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    history = [h for h in trainer.state.log_history if "loss" in h]
    atomic_write_text(out / "sft_log.json", json.dumps(history, indent=1))
    shutil.rmtree(out / "sft_run", ignore_errors=True)
    return seconds


def completion_logprob(model: Any, tokenizer: Any, messages: list[dict[str, str]], completion: str) -> float:
    """Total log-probability of `completion` as the assistant's answer to `messages`."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([list(prompt["input_ids"]) + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt["input_ids"]) - 1
    targets = ids[0, start + 1 :]
    return float(logp[start:].gather(-1, targets.unsqueeze(-1)).sum())
