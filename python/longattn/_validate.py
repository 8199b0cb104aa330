"""Argument checks of the public API. Every message names the argument, what was given and what is accepted."""

from __future__ import annotations

import math
import numbers

import torch

from . import _backend

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_HEAD_DIMS = range(1, 257)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MAX_WINDOW = 2**31 - 1       # window bounds and dilations: positions j = i ± bound · dilation stay within int64
MAX_SEED = 2**64 - 1         # seeds are what torch.Generator.manual_seed takes without wrapping: 0 .. 2^64 - 1
MAX_ROTATION_BYTES = 1 << 32  # rotations (heads, head_dim, n_hashes, n_buckets / 2) float32: at most 4 GiB
# Meta tensors (shapes only) follow the CPU rules and are served by the fake kernels.
SHAPE_ONLY_BACKENDS = ("cpu", "meta")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")


def resolve_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected None or a real number, got {scale!r} ({type(scale).__name__})")
    scale = float(scale)
    if not math.isfinite(scale) or abs(scale) > FLOAT32_MAX:
        raise ValueError(f"scale: got {scale}, expected a finite number within float32's range (|scale| <= "
                         f"{FLOAT32_MAX:.4g}; kernels compute in float32), or None for 1/sqrt(head_dim)")
    return scale


def check_no_grad(*tensors: torch.Tensor) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise NotImplementedError(
            "longattn has no backward pass yet: call it under torch.no_grad() / torch.inference_mode(), "
            "or on tensors that do not require grad")


def check_bshd_tensor(name: str, t) -> None:
    """A (batch, seq, heads, head_dim) tensor of a supported dtype."""
    check_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (batch, seq, heads, head_dim), got shape {_shape(t)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: dtype {t.dtype} is not supported; expected torch.float32, torch.float16 "
                         "or torch.bfloat16")


def check_qkv(q, k, v) -> None:
    """docs/semantics.md conventions: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_bshd_tensor(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v: expected one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v: expected one device, got q {q.device}, k {k.device}, v {v.device}")
    if q.shape[0] != k.shape[0] or q.shape[0] != v.shape[0]:
        raise ValueError(f"batch: q, k, v must share dim 0, got q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k, v: expected the same sequence length (dim 1), got k {_shape(k)}, v {_shape(v)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k, v: expected the same number of heads (dim 2), got k {_shape(k)}, v {_shape(v)}")
    hq, hk = q.shape[2], k.shape[2]
    if hk < 1 or hq % hk != 0:
        raise ValueError(f"heads: q has {hq} heads and k, v have {hk}; expected the k/v head count to divide the "
                         "query head count (grouped-query attention)")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"head_dim: q and k must share dim 3, got q {_shape(q)}, k {_shape(k)}")
    backend = _backend.of(q)
    if backend in SHAPE_ONLY_BACKENDS:
        for name, d in (("head_dim", q.shape[3]), ("head_dim of v", v.shape[3])):
            if d not in CPU_HEAD_DIMS:
                raise ValueError(f"{name}: got {d}; the CPU backend supports head dims 1..256")
    elif _backend.is_cuda_like(backend):
        check_cuda_support(q.dtype, q.shape[3], v.shape[3], backend)
    else:
        raise ValueError(f"device: got {q.device}; supported devices: cpu, cuda (and meta, for shapes)")


CUDA_TENSOR_CORE_HEAD_DIMS = (32, 64, 96, 128, 256)


def check_cuda_support(dtype, head_dim: int, head_dim_v: int, backend: str = "cuda") -> None:
    """What the CUDA kernels serve (the C++ side checks the compute capability, >= 8.0)."""
    from . import _C
    if backend == "cuda" and not _C.cuda_kernels_built:
        raise ValueError("device: got a CUDA tensor, but this longattn build has no CUDA kernels (it was built "
                         "without nvcc); supported devices: cpu")
    if dtype in (torch.float16, torch.bfloat16):
        if head_dim != head_dim_v or head_dim not in CUDA_TENSOR_CORE_HEAD_DIMS:
            raise ValueError(f"head_dim: got head_dim={head_dim}, head_dim_v={head_dim_v} with {dtype} on CUDA; "
                             f"supported: head_dim == head_dim_v in {CUDA_TENSOR_CORE_HEAD_DIMS} for float16 and "
                             "bfloat16 (tensor cores), or float32 with head dims 1..256 (CUDA cores, exact float32)")
    elif head_dim > 256 or head_dim_v > 256:
        raise ValueError(f"head_dim: got {head_dim} / {head_dim_v}; float32 on CUDA supports head dims 1..256")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_window(window, causal: bool) -> tuple[int, int]:
    """docs/semantics.md: window=(left, right), both inclusive, -1 unbounded; causal=True is right = 0."""
    if _is_int(window):
        raise ValueError(f"window: got the single number {window!r}; expected a (left, right) pair of ints, "
                         f"inclusive bounds, e.g. ({window}, {window}) for {window} keys on each side or "
                         f"({window}, 0) for causal; a single number is ambiguous (total width or one side?)")
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window: got {window!r}; expected a (left, right) pair of ints (-1 = unbounded)")
    for side, x in zip(("left", "right"), window):
        if not _is_int(x):
            raise TypeError(f"window: the {side} bound is {x!r} ({type(x).__name__}); expected an int")
        if x < -1 or x > MAX_WINDOW:
            raise ValueError(f"window: the {side} bound is {x}; expected an int from 0 to 2^31 - 1 = {MAX_WINDOW}, "
                             "or -1 for unbounded (any bound at least the sequence length is unbounded)")
    left, right = int(window[0]), int(window[1])
    if causal and right > 0:
        raise ValueError(f"window: got right = {right} with causal=True; causal means right = 0: pass "
                         f"window=({left}, 0), or causal=False for a window that looks {right} keys ahead")
    return left, right


def check_dilation(dilation, heads_q: int) -> list[int]:
    """An int >= 1 for all heads, or a sequence of one int >= 1 per query head. Returns [] for all ones."""
    if _is_int(dilation):
        values = [int(dilation)] * heads_q
        if dilation < 1 or dilation > MAX_WINDOW:
            raise ValueError(f"dilation: got {dilation}; expected an int from 1 to 2^31 - 1 (or one such int per "
                             "query head)")
    elif isinstance(dilation, (tuple, list)):
        if len(dilation) != heads_q:
            raise ValueError(f"dilation: got {len(dilation)} values {list(dilation)!r}; expected one per query "
                             f"head ({heads_q}), or a single int for all heads")
        for h, x in enumerate(dilation):
            if not _is_int(x):
                raise TypeError(f"dilation: the value for query head {h} is {x!r} ({type(x).__name__}); "
                                "expected an int")
            if x < 1 or x > MAX_WINDOW:
                raise ValueError(f"dilation: got {x} for query head {h}; expected an int from 1 to 2^31 - 1")
        values = [int(x) for x in dilation]
    else:
        raise TypeError(f"dilation: got {dilation!r} ({type(dilation).__name__}); expected an int >= 1 or a "
                        "sequence of one int per query head")
    return [] if all(x == 1 for x in values) else values


def check_global_tokens(global_tokens, q: torch.Tensor, k: torch.Tensor):
    """None, or a bool (B, S) tensor on the inputs' device, for self-attention (Sq == Sk)."""
    if global_tokens is None:
        return None
    check_tensor("global_tokens", global_tokens)
    if global_tokens.dtype != torch.bool:
        raise ValueError(f"global_tokens: dtype {global_tokens.dtype}; expected torch.bool (True = global)")
    B, Sq, Sk = q.shape[0], q.shape[1], k.shape[1]
    if Sq != Sk:
        raise ValueError(f"global_tokens: given with Sq = {Sq} != Sk = {Sk}; global tokens are defined for "
                         "self-attention only (Sq == Sk)")
    if tuple(global_tokens.shape) != (B, Sk):
        raise ValueError(f"global_tokens: got shape {_shape(global_tokens)}; expected (batch, seq) = ({B}, {Sk})")
    if global_tokens.device != q.device:
        raise ValueError(f"global_tokens: on {global_tokens.device}; expected the inputs' device {q.device}")
    return global_tokens


def check_int(name: str, value, minimum: int, maximum: int | None = None, what: str = "") -> int:
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        accepted = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"
        raise ValueError(f"{name}: got {value}; expected an int {accepted}{what}")
    return int(value)


def check_qk_v(qk, v) -> None:
    """docs/semantics.md: qk (B, S, H, D), v (B, S, H, Dv), one dtype and device."""
    for name, t in (("qk", qk), ("v", v)):
        check_bshd_tensor(name, t)
    if qk.dtype != v.dtype:
        raise ValueError(f"qk, v: expected one dtype, got qk {qk.dtype}, v {v.dtype}")
    if qk.device != v.device:
        raise ValueError(f"qk, v: expected one device, got qk {qk.device}, v {v.device}")
    if tuple(qk.shape[:3]) != tuple(v.shape[:3]):
        raise ValueError(f"qk, v: expected the same (batch, seq, heads), got qk {_shape(qk)}, v {_shape(v)} "
                         "(LSH attention shares one qk per head: no grouped-query heads)")
    if _backend.of(qk) in SHAPE_ONLY_BACKENDS:
        for name, d in (("head_dim", qk.shape[3]), ("head_dim of v", v.shape[3])):
            if d not in CPU_HEAD_DIMS:
                raise ValueError(f"{name}: got {d}; the CPU backend supports head dims 1..256")
    elif _backend.is_cuda_like(_backend.of(qk)):
        check_cuda_support(qk.dtype, qk.shape[3], v.shape[3], _backend.of(qk))
    else:
        raise ValueError(f"device: got {qk.device}; supported devices: cpu (and meta, for shapes)")


def check_n_buckets(n_buckets) -> tuple[int, list[int], int]:
    """An even int, or a sequence of even ints: factorized buckets (Hugging Face Reformer's num_buckets=[f0, f1, ...]).
    Returns (the number of buckets, the factors ([] for an int or a single factor), rotation columns: n_buckets // 2,
    or the sum of each factor // 2)."""
    if _is_int(n_buckets):
        total = check_int("n_buckets", n_buckets, 2, 1 << 24)
        if total % 2:
            raise ValueError(f"n_buckets: got {total}; expected an even number (argmax over xR and -xR)")
        return total, [], total // 2
    if isinstance(n_buckets, (list, tuple)):
        if not 1 <= len(n_buckets) <= 16:
            raise ValueError(f"n_buckets: got {len(n_buckets)} factors {list(n_buckets)!r}; expected an even int, or "
                             "1 to 16 even factors")
        total = 1
        for i, f in enumerate(n_buckets):
            if not _is_int(f):
                raise TypeError(f"n_buckets[{i}]: got {f!r} ({type(f).__name__}); expected an int")
            if f < 2 or f % 2:
                raise ValueError(f"n_buckets[{i}]: got {f}; expected an even int >= 2 (each factor hashes by an "
                                 "argmax over xR and -xR)")
            total *= int(f)
            if total > 1 << 24:
                raise ValueError(f"n_buckets: the factors {list(n_buckets)!r} make more than 2^24 buckets; expected "
                                 "at most 2^24")
        factors = [int(f) for f in n_buckets]
        if len(factors) == 1:
            return total, [], total // 2
        return total, factors, sum(f // 2 for f in factors)
    raise TypeError(f"n_buckets: got {n_buckets!r} ({type(n_buckets).__name__}); expected an even int, or a list of "
                    "even ints (factorized buckets)")


def check_rotations(rotations, heads: int, head_dim: int, n_hashes: int, columns: int, device):
    """columns: the rotation columns per round (n_buckets // 2, or the sum of each factor // 2)."""
    check_tensor("rotations", rotations)
    expected = (heads, head_dim, n_hashes, columns)
    if tuple(rotations.shape) != expected:
        raise ValueError(f"rotations: got shape {_shape(rotations)}; expected (heads, head_dim, n_hashes, "
                         f"n_buckets // 2, or the sum of each bucket factor // 2) = {expected}")
    if not rotations.dtype.is_floating_point:
        raise ValueError(f"rotations: dtype {rotations.dtype}; expected a floating-point tensor (used as float32)")
    if rotations.device != device:
        raise ValueError(f"rotations: on {rotations.device}; expected the inputs' device {device}")
    return rotations.to(torch.float32).contiguous()


def check_buckets(buckets, batch: int, heads: int, seqlen: int, n_hashes: int, n_buckets: int, device):
    check_tensor("buckets", buckets)
    expected = (batch, heads, n_hashes, seqlen)
    if tuple(buckets.shape) != expected:
        raise ValueError(f"buckets: got shape {_shape(buckets)}; expected (batch, heads, n_hashes, seq) = "
                         f"{expected}")
    if buckets.dtype.is_floating_point or buckets.dtype == torch.bool or buckets.is_complex():
        raise ValueError(f"buckets: dtype {buckets.dtype}; expected an integer tensor")
    if buckets.device != device:
        raise ValueError(f"buckets: on {buckets.device}; expected the inputs' device {device}")
    if buckets.numel() and buckets.device.type == "cpu":   # values: checked where that needs no device sync
        lo, hi = int(buckets.min()), int(buckets.max())
        if lo < 0 or hi > n_buckets:
            raise ValueError(f"buckets: values range over {lo}..{hi}; expected 0..{n_buckets - 1} (and {n_buckets} "
                             "for padding tokens)")
    return buckets.to(torch.int64).contiguous()


def check_key_padding_mask(mask, batch: int, seqlen: int, device):
    if mask is None:
        return None
    check_tensor("key_padding_mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"key_padding_mask: dtype {mask.dtype}; expected torch.bool (True = a real token, "
                         "False = padding)")
    if tuple(mask.shape) != (batch, seqlen):
        raise ValueError(f"key_padding_mask: got shape {_shape(mask)}; expected (batch, seq) = ({batch}, {seqlen})")
    if mask.device != device:
        raise ValueError(f"key_padding_mask: on {mask.device}; expected the inputs' device {device}")
    return mask


# ---- options for serving (softcap, sinks), variable-length batches and KV caches --------------------------

def check_softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap: expected a real number, got {softcap!r} ({type(softcap).__name__})")
    softcap = float(softcap)
    if not math.isfinite(softcap) or softcap < 0 or softcap > FLOAT32_MAX:
        raise ValueError(f"softcap: got {softcap}, expected a finite number from 0 (no soft-capping) to float32's "
                         f"largest, {FLOAT32_MAX:.4g}")
    return softcap


def check_sinks(sinks, heads_q: int, device):
    """None, or a float tensor (Hq,): one logit per query head, read as float32."""
    if sinks is None:
        return None
    check_tensor("sinks", sinks)
    if not sinks.dtype.is_floating_point:
        raise ValueError(f"sinks: dtype {sinks.dtype}; expected a floating-point tensor (read as float32)")
    if tuple(sinks.shape) != (heads_q,):
        raise ValueError(f"sinks: got shape {_shape(sinks)}; expected (heads_q,) = ({heads_q},), one logit per "
                         "query head")
    if sinks.device != device:
        raise ValueError(f"sinks: on {sinks.device}; expected the inputs' device {device}")
    return sinks.to(torch.float32).contiguous()


def check_window_only(window, causal: bool) -> tuple[int, int]:
    """varlen / KV cache: window=(left, right) with the rules of check_window; (-1, -1) = dense."""
    return check_window(window, causal)


def _check_packed(name: str, t, what: str) -> None:
    check_tensor(name, t)
    if t.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D tensor {what}, got shape {_shape(t)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: dtype {t.dtype} is not supported; expected torch.float32, torch.float16 "
                         "or torch.bfloat16")


def _check_head_dims(t_q, t_v, backend: str) -> None:
    D, Dv = t_q.shape[-1], t_v.shape[-1]
    if backend in SHAPE_ONLY_BACKENDS:
        for name, d in (("head_dim", D), ("head_dim of v", Dv)):
            if d not in CPU_HEAD_DIMS:
                raise ValueError(f"{name}: got {d}; the CPU backend supports head dims 1..256")
    elif _backend.is_cuda_like(backend):
        check_cuda_support(t_q.dtype, D, Dv, backend)
    else:
        raise ValueError(f"device: got {t_q.device}; supported devices: cpu, cuda (and meta, for shapes)")


def _check_heads(hq: int, hk: int) -> None:
    if hk < 1 or hq % hk != 0:
        raise ValueError(f"heads: q has {hq} heads and k, v have {hk}; expected the k/v head count to divide the "
                         "query head count (grouped-query attention)")


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """varlen_attention. Returns (batch, max_seqlen_q, max_seqlen_k), the hints resolved (None: computed, which on CUDA
    reads the offsets back to the host)."""
    _check_packed("q", q, "(total_q, heads_q, head_dim)")
    _check_packed("k", k, "(total_k, heads_k, head_dim)")
    _check_packed("v", v, "(total_k, heads_k, head_dim_v)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v: expected one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v: expected one device, got q {q.device}, k {k.device}, v {v.device}")
    if k.shape[0] != v.shape[0] or k.shape[1] != v.shape[1]:
        raise ValueError(f"k, v: expected the same rows and heads, got k {_shape(k)}, v {_shape(v)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"head_dim: q and k must share dim 2, got q {_shape(q)}, k {_shape(k)}")
    _check_heads(q.shape[1], k.shape[1])
    _check_head_dims(q, v, _backend.of(q))
    batch = None
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        check_tensor(name, cu)
        if cu.dtype != torch.int32 or cu.dim() != 1 or cu.shape[0] < 1:
            raise ValueError(f"{name}: got {cu.dtype} shape {_shape(cu)}; expected a 1-D torch.int32 tensor of "
                             "batch + 1 offsets")
        if cu.device != q.device:
            raise ValueError(f"{name}: on {cu.device}; expected the inputs' device {q.device}")
        if batch is not None and cu.shape[0] - 1 != batch:
            raise ValueError(f"cu_seqlens_q, cu_seqlens_k: {batch + 1} and {cu.shape[0]} offsets; expected one "
                             "each per sequence, plus one")
        batch = cu.shape[0] - 1
    # The offsets' values (start, order, end, hints) are checked by the C++ core for CPU tensors, inside the op, so
    # they are checked under torch.compile too; on CUDA the kernels bound every access instead (docs/semantics.md).
    hints = []
    for name, hint, cu in (("max_seqlen_q", max_seqlen_q, cu_seqlens_q), ("max_seqlen_k", max_seqlen_k, cu_seqlens_k)):
        if hint is None:  # computed: reads the offsets (a device-to-host copy on CUDA; give the hints to avoid it)
            hints.append(int((cu[1:] - cu[:-1]).max()) if batch > 0 and cu.device.type != "meta" else 0)
        else:
            hints.append(check_int(name, hint, 0))
    return batch, hints[0], hints[1]


def check_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, block_table, num_splits):
    """docs/semantics.md. Returns (cache_seqlens as an int32 tensor, seqlen_new, capacity, paged)."""
    check_bshd_tensor("q", q)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_bshd_tensor(name, t)
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name}: {t.dtype} on {t.device}; expected q's dtype {q.dtype} and device {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension has stride {t.stride(-1)}; the cache is written in place, "
                             "so it must have unit stride there (it cannot be copied)")
        if _backend.is_cuda_like(_backend.of(q)):
            step = 16 // t.element_size()
            if t.data_ptr() % 16 or any(s % step for s in t.stride()[:-1]):
                raise ValueError(f"{name}: CUDA reads the cache in 16-byte rows; its data pointer and strides must "
                                 f"be multiples of 16 bytes (got strides {tuple(t.stride())}); the cache cannot be "
                                 "copied since it is written in place")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache, v_cache: expected the same leading dims, got {_shape(k_cache)}, {_shape(v_cache)}")
    if q.shape[3] != k_cache.shape[3]:
        raise ValueError(f"head_dim: q and k_cache must share dim 3, got q {_shape(q)}, k_cache {_shape(k_cache)}")
    B, hk = q.shape[0], k_cache.shape[2]
    _check_heads(q.shape[2], hk)
    _check_head_dims(q, v_cache, _backend.of(q))
    paged = block_table is not None
    if paged:
        check_tensor("block_table", block_table)
        if block_table.dtype != torch.int32 or block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table: got {block_table.dtype} shape {_shape(block_table)}; expected torch.int32 "
                             f"(batch, max_blocks) with batch = {B}")
        if block_table.device != q.device or block_table.stride(1) != 1:
            raise ValueError("block_table: expected it on the inputs' device with unit stride in dim 1")
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if k_cache.shape[0] != B:
            raise ValueError(f"k_cache: got {k_cache.shape[0]} sequences, q has {B}; a contiguous cache is "
                             "(batch, capacity, heads_k, head_dim) (a paged one needs block_table)")
        capacity = k_cache.shape[1]
    if isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        cache_seqlens = torch.full((B,), int(cache_seqlens), dtype=torch.int32, device=q.device)
    check_tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.dtype != torch.int32 or tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens: got {cache_seqlens.dtype} shape {_shape(cache_seqlens)}; expected an int or "
                         f"a torch.int32 tensor ({B},)")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens: on {cache_seqlens.device}; expected the inputs' device {q.device}")
    seqlen_new = 0
    if (k is None) != (v is None):
        raise ValueError("k, v: give both new keys and values, or neither")
    if k is not None:
        for name, t, cache in (("k", k, k_cache), ("v", v, v_cache)):
            check_bshd_tensor(name, t)
            if t.dtype != q.dtype or t.device != q.device:
                raise ValueError(f"{name}: {t.dtype} on {t.device}; expected q's dtype and device")
            if t.shape[0] != B or t.shape[2] != hk or t.shape[3] != cache.shape[3]:
                raise ValueError(f"{name}: got shape {_shape(t)}; expected (batch, seqlen_new, heads_k, dim) = "
                                 f"({B}, ·, {hk}, {cache.shape[3]})")
        if k.shape[1] != v.shape[1]:
            raise ValueError(f"k, v: {k.shape[1]} and {v.shape[1]} new tokens; expected the same")
        seqlen_new = k.shape[1]
    # cache_seqlens and block_table values (capacity, block indices) are checked by the C++ core for CPU tensors
    # before anything is written, inside the op (so under torch.compile too); CUDA kernels bound every access instead.
    num_splits = check_int("num_splits", num_splits, 0, 64, " (0 = chosen by the library, 1 = no split)")
    return cache_seqlens, seqlen_new, capacity, paged, num_splits


def check_seed(seed) -> int | None:
    """None, or an int 0 .. 2^64 - 1 (torch.Generator.manual_seed's range)."""
    if seed is None:
        return None
    if not _is_int(seed):
        raise TypeError(f"seed: expected None or an int, got {seed!r} ({type(seed).__name__})")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: got {seed}; expected an int from 0 to 2^64 - 1")
    return int(seed)


def check_rotation_size(heads: int, head_dim: int, n_hashes: int, columns: int, n_buckets) -> None:
    """Hashing holds (heads, head_dim, n_hashes, columns) float32 rotations (and a transposed copy): refuse sizes that
    would ask the allocator for more than MAX_ROTATION_BYTES before anything is drawn. n_buckets (int or factors)
    only names the request in the message."""
    nbytes = 4 * heads * head_dim * n_hashes * columns
    if nbytes > MAX_ROTATION_BYTES:
        raise ValueError(f"n_buckets: {n_buckets} buckets x {n_hashes} hashes for {heads} heads of dim {head_dim} "
                         f"need {nbytes / 2**30:.1f} GiB of rotations (limit {MAX_ROTATION_BYTES / 2**30:.0f} GiB); "
                         "use fewer buckets, or hash elsewhere and pass buckets=")
