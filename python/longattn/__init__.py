"""longattn: long-sequence attention kernels (tiled dense, sliding-window, bucketed-LSH) for CPU and CUDA.

The public functions validate their arguments, then call one torch custom op each (see _ops.py), which hands raw
pointers and strides to the torch-free C++ core (longattn._C). Semantics: docs/semantics.md.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import _C, testing
from ._ops import (attention_fwd, attention_with_kvcache_fwd, lsh_attention_fwd, lsh_rotations_seeded,
                   varlen_attention_fwd)
from ._validate import (check_bool, check_buckets, check_dilation, check_global_tokens, check_int, check_kvcache,
                        check_key_padding_mask, check_n_buckets, check_no_grad, check_qk_v, check_qkv,
                        check_rotation_size, check_rotations, check_seed, check_sinks, check_softcap, check_varlen,
                        check_window, resolve_scale)

__version__ = _C.version()

# LONGATTN_CPU_ISA / LONGATTN_NUM_THREADS set to something unusable are ignored by the core: say so, once
for _problem in filter(None, _C.environment_warnings().split("\n")):
    warnings.warn(_problem, RuntimeWarning, stacklevel=2)

__all__ = ["attention", "sliding_window_attention", "varlen_attention", "attention_with_kvcache", "lsh_attention",
           "lsh_rotations", "set_num_threads", "get_num_threads", "capabilities", "__version__"]


def _shared_options(causal, return_lse, window, scale, head_dim: int, softcap, sinks, heads_q: int, device):
    """The options every dense/windowed operation takes, checked in one order. Returns (left, right, scale,
    softcap, sinks)."""
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    left, right = check_window(window, causal)
    return left, right, resolve_scale(scale, head_dim), check_softcap(softcap), check_sinks(sinks, heads_q, device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None,
              softcap: float = 0.0, sinks: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
              return_lse: bool = False):
    """Exact softmax(scale · q kᵀ) v without materialising the score matrix (docs/semantics.md).

    q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv); Hq % Hk == 0 (GQA/MQA); any strides with a unit last
    stride (other layouts are copied once). float32, float16, bfloat16; accumulation in float32.
    causal=True is aligned to the bottom-right corner: query i sees key j iff j <= i + (Sk - Sq).
    softcap > 0: each scaled score s becomes softcap · tanh(s / softcap) (Gemma 2). sinks (Hq,): one extra logit per
    query head in every row's softmax denominator, with no value (gpt-oss). key_padding_mask (B, Sk) bool, True = a
    real key: a False key is hidden from every query (Hugging Face's 2-D attention_mask).
    Returns out (B, Sq, Hq, Dv) in the input dtype, and with return_lse=True also lse (B, Hq, Sq) float32, the
    natural-log log-sum-exp of each row's scaled scores (the sink included). A row with no visible key gets out = 0
    and lse = -inf (its sink with sinks).
    """
    check_qkv(q, k, v)
    _, _, scale, softcap, sinks = _shared_options(causal, return_lse, (-1, -1), scale, q.shape[3], softcap, sinks,
                                                  q.shape[2], q.device)
    key_padding_mask = check_key_padding_mask(key_padding_mask, q.shape[0], k.shape[1], q.device)
    check_no_grad(q, k, v)
    out, lse = attention_fwd(q, k, v, scale, causal, -1, -1, [], None, return_lse, softcap, sinks, key_padding_mask)
    return (out, lse) if return_lse else out


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: tuple[int, int],
                             causal: bool = False, dilation=1, global_tokens: torch.Tensor | None = None,
                             scale: float | None = None, softcap: float = 0.0, sinks: torch.Tensor | None = None,
                             key_padding_mask: torch.Tensor | None = None, return_lse: bool = False):
    """Local attention with Longformer's dilation and global tokens, O(S · window) (docs/semantics.md).

    window=(left, right), both inclusive (the full window holds left + right + 1 keys), -1 = unbounded on that
    side; a single int is rejected. Query i sits at key position p = i + (Sk - Sq) and attends key j iff
    p - left*dil <= j <= p + right*dil and (j - p) % dil == 0. causal=True is right = 0 (causal with right > 0
    is an error). dilation: an int >= 1, or one per query head. global_tokens: bool (B, S), self-attention only:
    every query also attends each global key (once), and a global query attends every key.
    window=(-1, -1) equals attention(); window=(-1, 0) equals attention(causal=True).
    Peers' window parameters and how they map to this one: docs/window_conventions.md.
    softcap, sinks, key_padding_mask (combined with the window by AND), shapes, dtypes, GQA, strides, lse and empty
    rows as in attention().
    """
    check_qkv(q, k, v)
    left, right, scale, softcap, sinks = _shared_options(causal, return_lse, window, scale, q.shape[3], softcap,
                                                         sinks, q.shape[2], q.device)
    dilation = check_dilation(dilation, q.shape[2])
    global_tokens = check_global_tokens(global_tokens, q, k)
    key_padding_mask = check_key_padding_mask(key_padding_mask, q.shape[0], k.shape[1], q.device)
    check_no_grad(q, k, v)
    out, lse = attention_fwd(q, k, v, scale, causal, left, right, dilation, global_tokens, return_lse, softcap, sinks,
                             key_padding_mask)
    return (out, lse) if return_lse else out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, *, max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                     causal: bool = False, window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                     sinks: torch.Tensor | None = None, scale: float | None = None, return_lse: bool = False):
    """Attention over a batch of sequences of different lengths, packed without padding (FlashAttention's
    flash_attn_varlen_func convention).

    q (total_q, Hq, D), k (total_k, Hk, D), v (total_k, Hk, Dv): the sequences one after another. cu_seqlens_q,
    cu_seqlens_k: int32 (B + 1,) offsets from 0 to total (non-decreasing; empty sequences allowed): sequence b is
    rows cu[b] .. cu[b + 1] - 1, and attends only its own keys, causal and window aligned bottom-right within it
    (query i of b sits at key position i + Sk_b - Sq_b). max_seqlen_q / max_seqlen_k: hints for sizing the work
    (None: computed, which for CUDA tensors reads the offsets back to the host; give them under CUDA-graph capture).
    A hint below the true maximum is a ValueError on the CPU; on CUDA it costs speed only. window, softcap, sinks,
    scale as in sliding_window_attention (no dilation, global tokens or key padding: the packing is the padding).
    Returns out (total_q, Hq, Dv) and, with return_lse, lse (Hq, total_q) float32.
    """
    batch, max_seqlen_q, max_seqlen_k = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                     max_seqlen_k)
    left, right, scale, softcap, sinks = _shared_options(causal, return_lse, window, scale, q.shape[2], softcap,
                                                         sinks, q.shape[1], q.device)
    check_no_grad(q, k, v)
    out, lse = varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                                    left, right, softcap, sinks, return_lse)
    return (out, lse) if return_lse else out


def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, cache_seqlens,
                           k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                           block_table: torch.Tensor | None = None, causal: bool = False,
                           window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           sinks: torch.Tensor | None = None, scale: float | None = None, num_splits: int = 0,
                           return_lse: bool = False):
    """Decoding against a KV cache (docs/semantics.md; FlashAttention's flash_attn_with_kvcache convention).

    q (B, Sq, Hq, D): usually Sq = 1 (decode) or a few (speculative decoding, chunked prefill). The cache:
    contiguous k_cache (B, S_cache, Hk, D), v_cache (B, S_cache, Hk, Dv); or paged, k_cache (num_blocks,
    page_size, Hk, D), v_cache (num_blocks, page_size, Hk, Dv) with block_table (B, max_blocks) int32: token t of
    sequence b lives in block block_table[b, t // page_size], row t % page_size (vLLM's layout, any page size).
    cache_seqlens: int32 (B,) or an int: the tokens already in each cache. k, v (B, Snew, Hk, ·), optional: written
    into the caches in place at positions cache_seqlens[b] .. + Snew - 1 (a write past the capacity is a ValueError
    before anything is written), then attended. Sequence b attends its keys 0 .. L_b - 1, L_b = cache_seqlens[b] +
    Snew, causal and window aligned bottom-right to L_b; cache rows past L_b, and blocks the table does not name, are
    never read into a result. num_splits: 0 = the library chooses how many pieces to split each sequence's keys
    into (flash-decoding: partial results merged by their lse), 1 = no split, n = n pieces (at most 64).
    Returns out (B, Sq, Hq, Dv) and, with return_lse, lse (B, Hq, Sq) float32.
    """
    cache_seqlens, _, _, _, num_splits = check_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, block_table,
                                                        num_splits)
    left, right, scale, softcap, sinks = _shared_options(causal, return_lse, window, scale, q.shape[3], softcap,
                                                         sinks, q.shape[2], q.device)
    check_no_grad(q, k_cache, v_cache, *(t for t in (k, v) if t is not None))
    out, lse = attention_with_kvcache_fwd(q, k_cache, v_cache, cache_seqlens, k, v, block_table, scale, causal, left,
                                          right, softcap, sinks, num_splits, return_lse)
    return (out, lse) if return_lse else out


def lsh_rotations(heads: int, head_dim: int, n_hashes: int, n_buckets, *, seed: int | None = None,
                  device=None) -> torch.Tensor:
    """The random rotations (heads, head_dim, n_hashes, n_buckets // 2) float32 that lsh_attention draws; with
    factorized buckets (n_buckets a list of even factors) the last dim is the sum of each factor // 2.

    With `seed`, a private generator seeded with it (the global RNG is untouched); these are the numbers Hugging
    Face's LSHSelfAttention draws after `torch.manual_seed(hash_seed)` (float32 models). Without, the global RNG.
    """
    seed = check_seed(seed)
    columns = check_n_buckets(n_buckets)[2]
    check_rotation_size(heads, head_dim, n_hashes, columns, n_buckets)
    shape = (heads, head_dim, n_hashes, columns)
    if device is not None and torch.device(device).type == "meta":   # shapes only: nothing to draw
        return torch.empty(shape, dtype=torch.float32, device=device)
    if seed is None:
        return torch.randn(shape, dtype=torch.float32, device=device)
    # through an operator: a private generator inside torch.compile'd code would break the graph
    return lsh_rotations_seeded(*shape, seed >> 32, seed & 0xFFFFFFFF, torch.device(device or "cpu"))


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, *, n_hashes: int, n_buckets, chunk_length: int,
                  chunks_before: int = 1, chunks_after: int = 0, causal: bool = False,
                  rotations: torch.Tensor | None = None, seed: int | None = None, buckets: torch.Tensor | None = None,
                  key_padding_mask: torch.Tensor | None = None, return_lse: bool = False,
                  return_buckets: bool = False):
    """Reformer's shared-QK bucketed-LSH attention (docs/semantics.md); reproduces Hugging Face LSHSelfAttention.

    qk (B, S, H, D) is both query and key, v (B, S, H, Dv); S a multiple of chunk_length (pad, and mark the
    padding in key_padding_mask (B, S) bool, True = real token), or S <= chunk_length (then no hashing: one round of
    ordinary attention). Hashing: n_hashes rounds of argmax(concat(qk R, -qk R)) over n_buckets (even) buckets,
    with rotations R (H, D, n_hashes, n_buckets // 2) given, or drawn from a private generator seeded with `seed`,
    or from the global RNG; or pass `buckets` (B, H, n_hashes, S) to skip hashing. n_buckets=[f0, f1, ...] (even
    factors) factorizes as Hugging Face does: factor i takes the next f_i // 2 rotation columns, and the bucket is
    sum_i argmax_i * f0 * ... * f_{i-1}, of f0 * f1 * ... buckets. Each round's items are sorted by
    (bucket, position) and cut into chunks; a chunk attends chunks_before chunks back and chunks_after ahead
    (cyclic). Keys are qk normalised to unit RMS / sqrt(D); queries are raw qk. Scores of padding keys (and later
    keys when causal) are replaced by -1e9, then the token's own score by -1e5. Rounds combine by log-sum-exp.
    Returns out (B, S, H, Dv), then lse (B, H, S) float32 if return_lse, then buckets (B, H, n_hashes, S) int64 if
    return_buckets. Scores are float32 for every input dtype.
    """
    check_qk_v(qk, v)
    B, S, H, D = qk.shape
    n_hashes = check_int("n_hashes", n_hashes, 1, 64)
    n_buckets_arg = n_buckets
    n_buckets, bucket_factors, columns = check_n_buckets(n_buckets)
    chunk_length = check_int("chunk_length", chunk_length, 1)
    chunks_before = check_int("chunks_before", chunks_before, 0, 32)
    chunks_after = check_int("chunks_after", chunks_after, 0, 32 - chunks_before)
    for name, value in (("causal", causal), ("return_lse", return_lse), ("return_buckets", return_buckets)):
        check_bool(name, value)
    if S > chunk_length and S % chunk_length:
        padded = -(-S // chunk_length) * chunk_length
        raise ValueError(f"seq: got S = {S}, not a multiple of chunk_length = {chunk_length}; pad qk and v to "
                         f"S = {padded} and pass key_padding_mask (B, S) with False on the padding")
    seed = check_seed(seed)
    if buckets is not None and (rotations is not None or seed is not None):
        raise ValueError("buckets: given together with rotations or seed; buckets skip hashing, so give one of "
                         "buckets, rotations, seed")
    if rotations is not None and seed is not None:
        raise ValueError("rotations, seed: both given; seed only draws rotations, so give one of them")
    key_padding_mask = check_key_padding_mask(key_padding_mask, B, S, qk.device)
    if buckets is not None:
        buckets = check_buckets(buckets, B, H, S, n_hashes, n_buckets, qk.device)
    elif S > chunk_length or return_buckets:  # hashing needed
        if rotations is None:  # lsh_rotations refuses sizes that imply huge allocations before drawing
            rotations = lsh_rotations(H, D, n_hashes, n_buckets_arg, seed=seed, device=qk.device)
        rotations = check_rotations(rotations, H, D, n_hashes, columns, qk.device)
    else:
        rotations = None
    check_no_grad(qk, v)
    out, lse, buckets_out = lsh_attention_fwd(qk, v, n_hashes, n_buckets, chunk_length, chunks_before,
                                              chunks_after, causal, rotations, buckets, key_padding_mask,
                                              return_buckets, bucket_factors)
    result = (out,) + ((lse,) if return_lse else ()) + ((buckets_out,) if return_buckets else ())
    return result if len(result) > 1 else out


def set_num_threads(n: int) -> None:
    """Threads of longattn's CPU pool (the caller counts as one). Results are bitwise identical for any count."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {n!r} ({type(n).__name__})")
    if not 1 <= n <= 1024:
        raise ValueError(f"n: got {n}, expected 1..1024 threads")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.num_threads()


# The CPU engine builds, in the order of the C++ CpuIsa enum (amx_model is a test build: never chosen by default).
CPU_ISAS = ("scalar", "avx2", "avx512", "avx512_bf16", "amx", "amx_model")


def capabilities() -> dict:
    """What this build and machine can run (the first part of `python -m longattn`)."""
    cuda_usable = torch.cuda.is_available()
    return {
        "longattn": __version__,
        "torch": torch.__version__,
        "cpu_isa_active": _C.cpu_isa(),
        "cpu_isa_best": _C.best_cpu_isa(),
        "cpu_isa_compiled": [isa for isa in CPU_ISAS if _C.cpu_isa_supported(isa)],
        "cpu_amx_fp16": _C.cpu_amx_fp16_supported(),
        "threads": _C.num_threads(),
        "threads_env": os.environ.get("LONGATTN_NUM_THREADS"),
        "cpu_isa_env": os.environ.get("LONGATTN_CPU_ISA"),
        "environment_warnings": [w for w in _C.environment_warnings().split("\n") if w],
        "cuda_toolkit_at_build": bool(_C.cuda_toolkit_at_build),
        "cuda_kernels_built": bool(_C.cuda_kernels_built),
        "cuda_archs": list(_C.cuda_archs),
        "cuda_emulator_built": bool(_C.emulator_built),
        "cuda_emulator_plain_access_checks": bool(_C.emulator_plain_access_checks),
        "cuda_device": torch.cuda.get_device_name() if cuda_usable else None,
        "cuda_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda_usable else None,
    }


def __getattr__(name: str):
    # longattn.distributed (context parallelism) loads torch.distributed: imported on first use, not at import
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module 'longattn' has no attribute {name!r}")
