"""Single-query attention over the KV cache on CPUs, in a small C++ kernel (`csrc/decode_attention.cpp`).

Imagination decodes one token per stream per call, and each call reads the whole cache while doing almost
no arithmetic per byte: its speed is the memory bandwidth of the core. PyTorch's fused CPU attention reads the
cache at about 70 % of a streaming read on the machines of this project; the kernel reads it at the streaming
rate (docs/marie.md, "Measured"). The sums are the same up to their order (float rounding), which
`tests/test_decode_attention.py` checks against `scaled_dot_product_attention`.

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


def applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """The calls the kernel serves: one float32 query per stream on a CPU, over a contiguous cache."""
    return (q.device.type == "cpu" and q.shape[-2] == 1 and q.dtype == torch.float32 and k.dtype == torch.float32
            and k.is_contiguous() and q.stride(-1) == 1 and not torch.is_grad_enabled())


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, size: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of one query per stream over the first `size` positions of the cache.
    q [B, heads, 1, d]; k_cache, v_cache: a layer's whole [B, heads, max_tokens, d] buffers; -> [B, heads, 1, d]."""
    return _load().decode_attention(q, k_cache, v_cache, size)
