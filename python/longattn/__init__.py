"""longattn: long-sequence attention kernels (tiled dense, sliding-window, bucketed-LSH) for CPU and CUDA.

The public functions validate their arguments, then call one torch custom op each (see _ops.py), which hands raw
pointers and strides to the torch-free C++ core (longattn._C). Semantics: docs/semantics.md and SPEC.md.
"""

from __future__ import annotations

import os

import torch

from . import _C
from ._ops import attention_fwd
from ._validate import (check_bool, check_dilation, check_global_tokens, check_no_grad, check_qkv, check_window,
                        resolve_scale)

__version__ = _C.version()

__all__ = ["attention", "sliding_window_attention", "set_num_threads", "get_num_threads", "capabilities", "__version__"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None,
              return_lse: bool = False):
    """Exact softmax(scale · q kᵀ) v without materialising the score matrix (SPEC §1).

    q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv); Hq % Hk == 0 (GQA/MQA); any strides with a unit last
    stride (other layouts are copied once). float32, float16, bfloat16; accumulation in float32.
    causal=True is aligned to the bottom-right corner: query i sees key j iff j <= i + (Sk - Sq).
    Returns out (B, Sq, Hq, Dv) in the input dtype, and with return_lse=True also lse (B, Hq, Sq) float32, the
    natural-log log-sum-exp of each row's scaled scores. A row with no visible key gets out = 0 and lse = -inf.
    """
    check_qkv(q, k, v)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    scale = resolve_scale(scale, q.shape[3])
    check_no_grad(q, k, v)
    out, lse = attention_fwd(q, k, v, scale, causal, -1, -1, [], None)
    return (out, lse) if return_lse else out


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: tuple[int, int],
                             causal: bool = False, dilation=1, global_tokens: torch.Tensor | None = None,
                             scale: float | None = None, return_lse: bool = False):
    """Local attention with Longformer's dilation and global tokens, O(S · window) (SPEC §2).

    window=(left, right), both inclusive (the full window holds left + right + 1 keys), -1 = unbounded on that
    side; a single int is rejected. Query i sits at key position p = i + (Sk - Sq) and attends key j iff
    p - left*dil <= j <= p + right*dil and (j - p) % dil == 0. causal=True is right = 0 (causal with right > 0
    is an error). dilation: an int >= 1, or one per query head. global_tokens: bool (B, S), self-attention only:
    every query also attends each global key (once), and a global query attends every key.
    window=(-1, -1) equals attention(); window=(-1, 0) equals attention(causal=True).
    Peers' window parameters and how they map to this one: docs/window_conventions.md.
    Shapes, dtypes, GQA, strides, lse and empty rows as in attention().
    """
    check_qkv(q, k, v)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    left, right = check_window(window, causal)
    dilation = check_dilation(dilation, q.shape[2])
    global_tokens = check_global_tokens(global_tokens, q, k)
    scale = resolve_scale(scale, q.shape[3])
    check_no_grad(q, k, v)
    out, lse = attention_fwd(q, k, v, scale, causal, left, right, dilation, global_tokens)
    return (out, lse) if return_lse else out


def set_num_threads(n: int) -> None:
    """Threads of longattn's CPU pool (the caller counts as one). Results are bitwise identical for any count."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {n!r} ({type(n).__name__})")
    if not 1 <= n <= 1024:
        raise ValueError(f"n: got {n}, expected 1..1024 threads")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.num_threads()


def capabilities() -> dict:
    """What this build and machine can run (the first part of `python -m longattn`)."""
    cuda_usable = torch.cuda.is_available()
    return {
        "longattn": __version__,
        "torch": torch.__version__,
        "cpu_isa_active": _C.cpu_isa(),
        "cpu_isa_best": _C.best_cpu_isa(),
        "cpu_isa_compiled": [isa for isa in ("scalar", "avx2", "avx512") if _C.cpu_isa_supported(isa)],
        "threads": _C.num_threads(),
        "threads_env": os.environ.get("LONGATTN_NUM_THREADS"),
        "cuda_toolkit_at_build": bool(_C.cuda_toolkit_at_build),
        "cuda_kernels_built": bool(_C.cuda_kernels_built),
        "cuda_archs": list(_C.cuda_archs),
        "cuda_device": torch.cuda.get_device_name() if cuda_usable else None,
    }
