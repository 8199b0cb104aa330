"""The torch custom ops: allocate outputs, pass pointers and strides to longattn._C, register fake kernels.

Each operation is a torch operator (torch.ops.longattn.*), so torch.compile(fullgraph=True) treats each call as one
opaque node. They are registered through torch.library's low-level API (a schema, CPU and CUDA kernels, a fake
kernel that also serves meta tensors, and an autograd kernel that refuses gradients): torch.library.custom_op
would wrap every kernel in a guard whose first call imports torch._dynamo, about a second of cold start.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import _C, _backend


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # Kernels read each row with unit stride; anything else is copied once (documented in docs/semantics.md).
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _cuda_aligned(t: torch.Tensor, backend: str) -> torch.Tensor:
    # The CUDA kernels copy rows in 16-byte pieces: the base pointer and every row start must be 16-byte aligned.
    # Anything else (an odd offset or stride from slicing) is copied once.
    if not _backend.is_cuda_like(backend):
        return t
    step = 16 // t.element_size()
    if t.data_ptr() % 16 == 0 and all(s % step == 0 for s in t.stride()[:-1]):
        return t
    return t.clone(memory_format=torch.contiguous_format)  # a fresh allocation: aligned even if t was contiguous


def _bsh_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def _stream_handle(device: torch.device, backend: str) -> int:
    return torch.cuda.current_stream(device).cuda_stream if backend == "cuda" else 0


def _device_index(device: torch.device, backend: str) -> int:
    return device.index if backend == "cuda" and device.index is not None else -1


_LIB = torch.library.Library("longattn", "DEF")  # the namespace; must stay alive as long as the ops


def _refuse_grad(op_name: str, mutated: tuple[int, ...]):
    """The autograd kernel: no backward exists yet, so inputs that need a gradient are an error, not a result
    silently detached from the graph; otherwise the call goes on below autograd (bumping the version counters of
    arguments mutated in place, as autograd expects)."""
    def kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            raise NotImplementedError(
                f"longattn::{op_name}: longattn has no backward pass yet: call it under torch.no_grad() / "
                "torch.inference_mode(), or on tensors that do not require grad")
        with torch._C._AutoDispatchBelowAutograd():
            result = getattr(torch.ops.longattn, op_name).default(*args)
        for i in mutated:
            torch.autograd.graph.increment_version(args[i])
        return result
    return kernel


def _operator(schema: str, fake, mutated: tuple[int, ...] = ()):
    """Defines longattn::<name> by `schema`, with the decorated function as its CPU and CUDA kernel and `fake` as its
    fake (and meta) kernel; returns the operator. `mutated`: positions of arguments the kernel writes in place
    (marked `(a!)` in the schema)."""
    def define(kernel):
        name = schema[:schema.index("(")]
        _LIB.define(schema)
        _LIB.impl(name, kernel, "CPU")
        _LIB.impl(name, kernel, "CUDA")
        _LIB.impl(name, fake, "Meta")
        _LIB.impl(name, _refuse_grad(name, mutated), "Autograd")
        torch.library.register_fake(f"longattn::{name}", fake, lib=_LIB)
        op = getattr(torch.ops.longattn, name).default
        op.__doc__ = kernel.__doc__
        return op
    return define


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _run(backend, q, k, v, out, lse, sizes, q_strides, k_strides, v_strides, out_strides, lse_strides, scale, causal,
         window_left, window_right, dilation=(), global_tokens=None, softcap=0.0, sinks=None, key_padding_mask=None,
         varlen=(0, 0, 0, 0), kvcache=(0,) * 9, k_new_strides=(0, 0, 0), v_new_strides=(0, 0, 0)):
    """One call of the C++ core (every attention operation but LSH); tensors already checked and laid out."""
    g_ptr, g_strides = 0, (0, 0)
    if global_tokens is not None:
        g_ptr, g_strides = global_tokens.data_ptr(), (global_tokens.stride(0), global_tokens.stride(1))
    m_strides = (0, 0) if key_padding_mask is None else (key_padding_mask.stride(0), key_padding_mask.stride(1))
    args = [q.data_ptr(), _ptr(k), _ptr(v), out.data_ptr(), _ptr(lse), str(q.dtype).removeprefix("torch."), backend,
            sizes, q_strides, k_strides, v_strides, out_strides, lse_strides, scale, causal, window_left, window_right,
            list(dilation), g_ptr, g_strides, _stream_handle(q.device, backend), 0, 0, _device_index(q.device, backend),
            softcap, _ptr(sinks), _ptr(key_padding_mask), m_strides, varlen, kvcache, k_new_strides, v_new_strides]
    workspace = None
    if _backend.is_cuda_like(backend):
        # device scratch (global-token index, key-split partials) from torch's allocator: no cudaMalloc inside the
        # call, so CUDA-graph capture works
        n = _C.attention_workspace_bytes(*args)
        if n:
            workspace = torch.empty(n, dtype=torch.uint8, device=q.device)
            args[21], args[22] = workspace.data_ptr(), n
    _C.attention_forward(*args)


def _bshd_outputs_fake(q, head_dim_v: int, need_lse: bool):
    """out (B, Sq, Hq, Dv) like q, and lse (B, Hq, Sq) float32 or an empty (0,) tensor."""
    B, Sq, Hq, _ = q.shape
    out = q.new_empty((B, Sq, Hq, head_dim_v))
    lse = q.new_empty((B, Hq, Sq) if need_lse else (0,), dtype=torch.float32)
    return out, lse


def _attention_fake(q, k, v, scale, causal, window_left, window_right, dilation, global_tokens, need_lse, softcap,
                    sinks, key_padding_mask):
    return _bshd_outputs_fake(q, v.shape[3], need_lse)


@_operator("attention_fwd(Tensor q, Tensor k, Tensor v, float scale, bool causal, SymInt window_left, "
           "SymInt window_right, SymInt[] dilation, Tensor? global_tokens, bool need_lse, float softcap, "
           "Tensor? sinks, Tensor? key_padding_mask) -> (Tensor, Tensor)", _attention_fake)
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                  window_left: int, window_right: int, dilation: list[int],
                  global_tokens: Optional[torch.Tensor], need_lse: bool, softcap: float,
                  sinks: Optional[torch.Tensor],
                  key_padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense / causal / sliding-window attention forward (docs/semantics.md: attention, sliding_window_attention and
    the shared options), arguments already validated; sinks float32 (Hq,), key_padding_mask bool (B, Sk).

    dilation: [] for 1, else one int per query head. global_tokens: None or bool (B, Sk) with Sq == Sk.
    Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq) float32), lse an empty (0,) tensor unless need_lse (the kernel
    then skips computing it).
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk, Dv = k.shape[1], k.shape[2], v.shape[3]
    backend = _backend.of(q)
    out = _backend.new_output((B, Sq, Hq, Dv), q.dtype, q.device)
    lse = _backend.new_output((B, Hq, Sq) if need_lse else (0,), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    if Sk == 0:  # every row is empty: out = 0, lse = -inf (or the sink), nothing to launch
        out.zero_()
        if need_lse:
            lse.copy_(sinks.view(1, Hq, 1).expand(B, Hq, Sq) if sinks is not None else torch.full_like(lse, -math.inf))
        return out, lse
    q, k, v = (_cuda_aligned(_unit_last_stride(t), backend) for t in (q, k, v))
    _run(backend, q, k, v, out, lse if need_lse else None, (B, Sq, Sk, Hq, Hk, D, Dv), _bsh_strides(q),
         _bsh_strides(k), _bsh_strides(v), _bsh_strides(out), (lse.stride(0), lse.stride(1)) if need_lse else (0, 0),
         scale, causal, window_left, window_right, dilation, global_tokens, softcap, sinks, key_padding_mask)
    return out, lse


def _varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, window_left,
                 window_right, softcap, sinks, need_lse):
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    lse = q.new_empty((q.shape[1], q.shape[0]) if need_lse else (0,), dtype=torch.float32)
    return out, lse


@_operator("varlen_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
           "SymInt max_seqlen_q, SymInt max_seqlen_k, float scale, bool causal, SymInt window_left, "
           "SymInt window_right, float softcap, Tensor? sinks, bool need_lse) -> (Tensor, Tensor)", _varlen_fake)
def varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float,
                         causal: bool, window_left: int, window_right: int, softcap: float,
                         sinks: Optional[torch.Tensor], need_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length batch forward (docs/semantics.md: varlen_attention), arguments already validated.
    Returns (out (total_q, Hq, Dv), lse (Hq, total_q) float32, or an empty (0,) tensor unless need_lse)."""
    total_q, Hq, D = q.shape
    total_k, Hk, Dv = k.shape[0], k.shape[1], v.shape[2]
    B = cu_seqlens_q.shape[0] - 1
    backend = _backend.of(q)
    out = _backend.new_output((total_q, Hq, Dv), q.dtype, q.device)
    lse = _backend.new_output((Hq, total_q) if need_lse else (0,), torch.float32, q.device)
    if out.numel() == 0 or B == 0:
        return out, lse
    q, k, v = (_cuda_aligned(_unit_last_stride(t), backend) for t in (q, k, v))
    packed = lambda t: (0, t.stride(0), t.stride(1))  # noqa: E731 (no batch stride: rows of all sequences)
    _run(backend, q, k, v, out, lse if need_lse else None, (B, max_seqlen_q, max_seqlen_k, Hq, Hk, D, Dv),
         packed(q), packed(k), packed(v), packed(out), (0, lse.stride(0)) if need_lse else (0, 0), scale, causal,
         window_left, window_right, softcap=softcap, sinks=sinks,
         varlen=(cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr(), total_q, total_k))
    return out, lse


def _kvcache_fake(q, k_cache, v_cache, cache_seqlens, k, v, block_table, scale, causal, window_left, window_right,
                  softcap, sinks, num_splits, need_lse):
    return _bshd_outputs_fake(q, v_cache.shape[3], need_lse)


@_operator("attention_with_kvcache_fwd(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_seqlens, "
           "Tensor? k, Tensor? v, Tensor? block_table, float scale, bool causal, SymInt window_left, "
           "SymInt window_right, float softcap, Tensor? sinks, SymInt num_splits, bool need_lse) -> (Tensor, Tensor)",
           _kvcache_fake, mutated=(1, 2))
def attention_with_kvcache_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               cache_seqlens: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
                               block_table: Optional[torch.Tensor], scale: float, causal: bool, window_left: int,
                               window_right: int, softcap: float, sinks: Optional[torch.Tensor], num_splits: int,
                               need_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cache decoding forward (docs/semantics.md: attention_with_kvcache), arguments already validated: k, v (new
    tokens) are appended to the caches in place, then attended. Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq)
    float32 or an empty (0,) tensor)."""
    B, Sq, Hq, D = q.shape
    Hk, Dv = k_cache.shape[2], v_cache.shape[3]
    backend = _backend.of(q)
    out = _backend.new_output((B, Sq, Hq, Dv), q.dtype, q.device)
    lse = _backend.new_output((B, Hq, Sq) if need_lse else (0,), torch.float32, q.device)
    seqlen_new = 0 if k is None else k.shape[1]
    if B == 0 or (out.numel() == 0 and seqlen_new == 0):
        return out, lse
    q = _cuda_aligned(_unit_last_stride(q), backend)
    if k is not None:
        k, v = (_cuda_aligned(_unit_last_stride(t), backend) for t in (k, v))
    paged = block_table is not None
    capacity = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
    kvcache = (cache_seqlens.data_ptr(), _ptr(block_table), block_table.stride(0) if paged else 0,
               k_cache.shape[0] if paged else 0, k_cache.shape[1] if paged else 0, _ptr(k), _ptr(v), seqlen_new,
               num_splits)
    _run(backend, q, k_cache, v_cache, out, lse if need_lse else None, (B, Sq, capacity, Hq, Hk, D, Dv),
         _bsh_strides(q), _bsh_strides(k_cache), _bsh_strides(v_cache), _bsh_strides(out),
         (lse.stride(0), lse.stride(1)) if need_lse else (0, 0), scale, causal, window_left, window_right,
         softcap=softcap, sinks=sinks, kvcache=kvcache,
         k_new_strides=(0, 0, 0) if k is None else _bsh_strides(k),
         v_new_strides=(0, 0, 0) if v is None else _bsh_strides(v))
    return out, lse


def _lsh_fake(qk, v, n_hashes, n_buckets, chunk_length, chunks_before, chunks_after, causal, rotations, buckets,
              key_padding_mask, return_buckets, bucket_factors=()):
    B, S, H, _ = qk.shape
    out = qk.new_empty((B, S, H, v.shape[3]))
    lse = qk.new_empty((B, H, S), dtype=torch.float32)
    buckets_out = qk.new_empty((B, H, n_hashes, S) if return_buckets else (0,), dtype=torch.int64)
    return out, lse, buckets_out


@_operator("lsh_attention_fwd(Tensor qk, Tensor v, SymInt n_hashes, SymInt n_buckets, SymInt chunk_length, "
           "SymInt chunks_before, SymInt chunks_after, bool causal, Tensor? rotations, Tensor? buckets, "
           "Tensor? key_padding_mask, bool return_buckets, SymInt[] bucket_factors=[]) -> (Tensor, Tensor, Tensor)",
           _lsh_fake)
def lsh_attention_fwd(qk: torch.Tensor, v: torch.Tensor, n_hashes: int, n_buckets: int, chunk_length: int,
                      chunks_before: int, chunks_after: int, causal: bool, rotations: Optional[torch.Tensor],
                      buckets: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor],
                      return_buckets: bool, bucket_factors=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSH attention forward (docs/semantics.md: lsh_attention), arguments already validated; rotations float32 and
    buckets int64 are contiguous; n_buckets the total, bucket_factors its factors when factorized ([] if not).
    Returns (out (B, S, H, Dv), lse (B, H, S) float32, buckets (B, H, n_hashes, S) int64, or an empty (0,) tensor
    unless return_buckets)."""
    B, S, H, D = qk.shape
    Dv = v.shape[3]
    backend = _backend.of(qk)
    out = _backend.new_output((B, S, H, Dv), qk.dtype, qk.device)
    lse = _backend.new_output((B, H, S), torch.float32, qk.device)
    buckets_out = torch.empty((B, H, n_hashes, S) if return_buckets else (0,), dtype=torch.int64, device=qk.device)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse, buckets_out
    qk, v = (_cuda_aligned(_unit_last_stride(t), backend) for t in (qk, v))
    m_ptr, m_strides = 0, (0, 0)
    if key_padding_mask is not None:
        m_ptr, m_strides = key_padding_mask.data_ptr(), (key_padding_mask.stride(0), key_padding_mask.stride(1))
    args = [qk.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), str(qk.dtype).removeprefix("torch."),
            backend, (B, S, H, D, Dv), _bsh_strides(qk), _bsh_strides(v), _bsh_strides(out),
            (lse.stride(0), lse.stride(1)), (n_hashes, n_buckets, chunk_length, chunks_before, chunks_after), causal,
            _ptr(rotations), _ptr(buckets), buckets_out.data_ptr() if return_buckets else 0, m_ptr, m_strides,
            _stream_handle(qk.device, backend), [int(f) for f in bucket_factors], 0, 0,
            _device_index(qk.device, backend)]
    workspace = None
    if _backend.is_cuda_like(backend):  # buckets, sort, key norms, round partials: torch's allocator, no cudaMalloc
        n = _C.lsh_attention_workspace_bytes(*args)
        if n:
            workspace = torch.empty(n, dtype=torch.uint8, device=qk.device)
            args[20], args[21] = workspace.data_ptr(), n
    _C.lsh_attention_forward(*args)
    return out, lse, buckets_out


def _rotations_fake(heads, head_dim, n_hashes, columns, seed_hi, seed_lo, device):
    return torch.empty((heads, head_dim, n_hashes, columns), dtype=torch.float32, device=device)


def _rotations_kernel(heads, head_dim, n_hashes, columns, seed_hi, seed_lo, device):
    """Rotations drawn from a private generator seeded with seed_hi * 2^32 + seed_lo (a 64-bit seed in two schema
    ints). An operator, so that torch.compile(fullgraph=True) treats the draw as one opaque node instead of breaking
    the graph on the torch.Generator."""
    if device.type == "meta":
        return _rotations_fake(heads, head_dim, n_hashes, columns, seed_hi, seed_lo, device)
    generator = torch.Generator(device=device).manual_seed((seed_hi << 32) | seed_lo)
    return torch.randn((heads, head_dim, n_hashes, columns), dtype=torch.float32, device=device, generator=generator)


# No tensor arguments: one kernel for every device (CompositeExplicitAutograd), chosen by the `device` argument.
_LIB.define("lsh_rotations_seeded(SymInt heads, SymInt head_dim, SymInt n_hashes, SymInt columns, int seed_hi, "
            "int seed_lo, Device device) -> Tensor")
_LIB.impl("lsh_rotations_seeded", _rotations_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("longattn::lsh_rotations_seeded", _rotations_fake, lib=_LIB)
lsh_rotations_seeded = torch.ops.longattn.lsh_rotations_seeded.default
