"""Decoding attention over the KV cache on CPUs, in a small C++ kernel (`csrc/decode_attention.cpp`).

Imagination decodes one to three tokens per stream per call, and each call reads the whole cache while doing
almost no arithmetic per byte: its speed is the memory bandwidth of the core. PyTorch's CPU attention reads the
cache below a streaming read on the machines of this project, and writing the new keys and values into the cache
is one more pass of scattered row writes; the kernel writes them and reads each stream's keys and values once,
at about the streaming rate (docs/marie.md, "Measured"). The sums are the same up to their order (float
rounding), which `tests/test_decode_attention.py` checks against `scaled_dot_product_attention`.

The kernel is compiled on first use (about 30 s, then cached by PyTorch under ~/.cache/torch_extensions; one
build serves every x86-64 CPU through the compiler's function multiversioning). Where it cannot be built (no
C++ compiler), a warning says so once and decoding falls back to PyTorch's attention.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
_module = None        # the compiled extension, once built
_failed = False       # a build failed: do not try again in this process


def _load():
    global _module, _failed
    if _module is None and not _failed:
        try:
            from torch.utils.cpp_extension import load
            _module = load("marie_decode_attention", sources=[str(SOURCE)],
                           extra_cflags=["-O3", "-fopenmp-simd"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, a read-only cache: fall back, say it once
            _failed = True
            warnings.warn(f"the CPU decoding-attention kernel could not be built ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); imagination uses PyTorch's attention "
                          "instead (install a C++ compiler, or set world_model.cpu_decode_kernel: false)")
    return _module


def available() -> bool:
    """Whether the kernel is built (building it now if it was not)."""
    return _load() is not None


MAX_QUERIES = 8   # new tokens per call the kernel serves (csrc: MAX_QUERIES); longer calls use PyTorch's attention


def applies(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """The calls the kernel serves: up to MAX_QUERIES float32 queries per stream on a CPU, over a contiguous cache,
    without gradients."""
    return (q.device.type == "cpu" and q.shape[-2] <= MAX_QUERIES and q.dtype == torch.float32
            and k_cache.dtype == torch.float32 and k_cache.is_contiguous() and q.stride(-1) == 1
            and not torch.is_grad_enabled())


def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, start: int) -> torch.Tensor:
    """Write the T new keys and values [B, heads, T, d] at positions start.. of a layer's cache buffers
    [B, heads, max_tokens, d], then attend: query t over positions 0..start+t. q [B, heads, T, d] -> [B, heads, T, d]."""
    return _load().decode_attention(q, k_new, v_new, k_cache, v_cache, start)
