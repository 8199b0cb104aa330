"""Readable float64 oracles of SPEC.md, for tests. Written for reading, not speed: every mask is explicit."""

from __future__ import annotations

import math

import torch


def visible_keys(seqlen_q: int, seqlen_k: int, *, causal: bool = False, window: tuple[int, int] = (-1, -1),
                 device=None) -> torch.Tensor:
    """Bool (Sq, Sk): may query i attend key j?

    Query i sits at key position p = i + (Sk - Sq) (bottom-right alignment). It may attend key j iff
    p - left <= j <= p + right, where a bound of -1 is unbounded; causal is right = 0.
    """
    left, right = window
    if causal:
        right = 0
    p = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    ok = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        ok &= j >= p - left
    if right >= 0:
        ok &= j <= p + right
    return ok


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                     scale: float | None = None, compute_dtype: torch.dtype = torch.float64):
    """softmax(scale * q kᵀ + mask) v, BSHD layout, GQA by repeating kv heads.

    visible: bool, broadcastable to (B, Hq, Sq, Sk). Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq)) in
    compute_dtype: float64 for the oracle; the inputs' own dtype measures how much error plain PyTorch makes
    doing the same math in that precision (the yardstick the tests hold longattn to).
    A row with no visible key gets out = 0 and lse = -inf.
    """
    B, Sq, Hq, D = q.shape
    Hk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q64 = q.to(compute_dtype).transpose(1, 2)                                      # (B, Hq, Sq, D)
    k64 = k.to(compute_dtype).transpose(1, 2).repeat_interleave(Hq // Hk, dim=1)  # (B, Hq, Sk, D)
    v64 = v.to(compute_dtype).transpose(1, 2).repeat_interleave(Hq // Hk, dim=1)  # (B, Hq, Sk, Dv)
    scores = scale * (q64 @ k64.transpose(-1, -2))                          # (B, Hq, Sq, Sk)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                                   # (B, Hq, Sq)
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - lse.masked_fill(empty, 0.0)[..., None])      # exp(-inf) = 0 on empty rows
    out = probs @ v64                                                       # (B, Hq, Sq, Dv)
    return out.transpose(1, 2), lse


def attention(q, k, v, *, causal: bool = False, scale: float | None = None, compute_dtype=torch.float64):
    """SPEC §1: returns (out, lse), computed in compute_dtype (float64: the oracle)."""
    visible = visible_keys(q.shape[1], k.shape[1], causal=causal, device=q.device)
    return masked_attention(q, k, v, visible, scale, compute_dtype)


def sliding_window_visible(seqlen_q: int, seqlen_k: int, *, window: tuple[int, int], causal: bool = False,
                           dilation=1, global_tokens: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Bool (B or 1, Hq or 1, Sq, Sk): may query i attend key j under SPEC §2?

    Query i sits at key position p = i + (Sk - Sq). Window part: p - left*dil <= j <= p + right*dil (a bound of -1
    is unbounded; causal is right = 0) and (j - p) % dil == 0. Global part (Sq == Sk): every query also sees each
    global key, and a global query sees every key. dilation: an int, or one int per query head.
    """
    left, right = window
    if causal:
        right = 0
    dil = torch.as_tensor([dilation] if isinstance(dilation, int) else list(dilation), device=device)
    dil = dil[:, None, None]                                           # (Hq or 1, 1, 1)
    p = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    ok = (j - p) % dil == 0                                            # (Hq or 1, Sq, Sk)
    if left >= 0:
        ok &= j >= p - left * dil
    if right >= 0:
        ok &= j <= p + right * dil
    ok = ok[None]                                                      # (1, Hq or 1, Sq, Sk)
    if global_tokens is not None:
        g = global_tokens.to(device=device, dtype=torch.bool)         # (B, Sk), Sq == Sk
        ok = ok | g[:, None, None, :] | g[:, None, :, None]
    return ok


def sliding_window_attention(q, k, v, *, window: tuple[int, int], causal: bool = False, dilation=1,
                             global_tokens: torch.Tensor | None = None, scale: float | None = None,
                             compute_dtype=torch.float64):
    """SPEC §2: returns (out, lse), computed in compute_dtype (float64: the oracle)."""
    visible = sliding_window_visible(q.shape[1], k.shape[1], window=window, causal=causal, dilation=dilation,
                                     global_tokens=global_tokens, device=q.device)
    return masked_attention(q, k, v, visible, scale, compute_dtype)
