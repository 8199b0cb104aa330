"""The torch custom ops: allocate outputs, pass pointers and strides to longattn._C, register fake kernels.

Registered with torch.library.custom_op, so torch.compile(fullgraph=True) treats each call as one opaque node.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _C


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # Kernels read each row with unit stride; anything else is copied once (documented in docs/semantics.md).
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _bsh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def _stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


@torch.library.custom_op("longattn::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                  window_left: int, window_right: int, dilation: list[int],
                  global_tokens: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense / causal / sliding-window attention forward (SPEC §1, §2), arguments already validated.

    dilation: [] for 1, else one int per query head. global_tokens: None or bool (B, Sk) with Sq == Sk.
    Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq) float32).
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk, Dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty((B, Sq, Hq, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    if Sk == 0:  # every row is empty: out = 0, lse = -inf, nothing to launch
        return out.zero_(), lse.fill_(float("-inf"))
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    g_ptr, g_strides = 0, (0, 0)
    if global_tokens is not None:
        g_ptr, g_strides = global_tokens.data_ptr(), (global_tokens.stride(0), global_tokens.stride(1))
    _C.attention_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
        str(q.dtype).removeprefix("torch."), q.device.type, (B, Sq, Sk, Hq, Hk, D, Dv),
        _bsh_strides(q), _bsh_strides(k), _bsh_strides(v), _bsh_strides(out), (lse.stride(0), lse.stride(1)),
        scale, causal, window_left, window_right, list(dilation), g_ptr, g_strides, _stream_handle(q.device))
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, scale, causal, window_left, window_right, dilation, global_tokens):
    B, Sq, Hq, _ = q.shape
    out = q.new_empty((B, Sq, Hq, v.shape[3]))
    lse = q.new_empty((B, Hq, Sq), dtype=torch.float32)
    return out, lse
