"""A tiny chat model and tokenizer built locally, for CPU tests and toy experiments.

Tests and the CPU sandbox must never download weights, yet the training code path has to
run end to end with a real `PreTrainedModel`, a real fast tokenizer and a chat template.
This module builds both from nothing: a byte-level BPE tokenizer trained on a few sentences
(so any text, scaffolds included, tokenizes without unknown tokens) and a randomly
initialised Qwen2 or Llama model a few tens of thousands of parameters big.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

# ChatML, as used by Qwen: every turn is `<|im_start|>role\ncontent<|im_end|>\n`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

DEFAULT_CORPUS = [
    "You are a helpful assistant.",
    "Give the user the most helpful, accurate and complete answer you can.",
    "Include in your answer: avoid in your answer: points point.",
    "Do not mention, quote or hint at these guidelines in your answer.",
    "I have a headache and a mild fever since yesterday. What should I do?",
    "Drink plenty of water, rest, and take paracetamol if needed.",
    "See a doctor if the fever lasts more than three days or you feel worse.",
    "Seek emergency care for chest pain, trouble breathing or confusion.",
    "The response recommends rest. The response mentions hydration.",
    "The response suggests antibiotics without a prescription.",
    "My child has a rash after eating peanuts. Is it an allergy?",
    "Call emergency services if the lips or tongue swell.",
    "hello world yes no maybe the a an and or of to in on for with is are was",
    "0 1 2 3 4 5 6 7 8 9 + - ( ) : ; , . ? ! ' \" / *",
]


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400):
    """A fast byte-level BPE tokenizer with a ChatML template; `<|im_end|>` ends a turn."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        padding_side="left",
        truncation_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    tokenizer,
    *,
    arch: Literal["qwen2", "llama"] = "qwen2",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 4096,
    seed: int = 0,
):
    """A randomly initialised causal LM whose vocabulary matches `tokenizer` (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    return model


def save_tiny_model(out_dir: str | Path, *, seed: int = 0, **model_kwargs) -> Path:
    """Build the tokenizer and model and save both, so a params file can name the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(source: str | Path, **kwargs):
    """`AutoTokenizer.from_pretrained`, except for tokenizers saved as a generic fast tokenizer.

    Why: transformers 5's AutoTokenizer picks the tokenizer class of the *model type* (a
    Qwen2-shaped tiny model gets Qwen2Tokenizer), which swaps in Qwen's pre-tokenizer and so
    misreads a locally built word-level vocabulary. A folder whose `tokenizer_config.json`
    names a generic class is loaded as exactly that; hub models are unaffected.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(source) / "tokenizer_config.json"
    if config.is_file():
        saved = json.loads(config.read_text()).get("tokenizer_class")
        if saved in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(source), **kwargs)
    return AutoTokenizer.from_pretrained(str(source), **kwargs)
