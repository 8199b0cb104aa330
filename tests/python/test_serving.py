"""Inference-serving features against the float64 oracle: softcap, sinks and key padding (the shared options),
variable-length batches and KV-cache decoding (contiguous and paged caches, appends, split-KV).

Every case runs on the CPU (each ISA where the fixture asks) and, through the `dev` fixture of serving_cases, on the
CUDA backend too (tests/python/test_cuda_serving.py)."""

import pytest
import torch

import longattn
from longattn import reference

from helpers import assert_matches_oracle, bshd

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(out, lse, ref, same):
    assert_matches_oracle(out, ref[0], same[0], "out")
    assert_matches_oracle(lse, ref[1], same[1].float(), "lse")


# ---- softcap, sinks, key padding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softcap", [0.0, 0.5, 5.0, 50.0])
@pytest.mark.parametrize("window", [None, (20, 5)])
def test_softcap(cpu_isa, dtype, softcap, window):
    q, k, v = bshd(2, 130, 4, 64, dtype), bshd(2, 150, 2, 64, dtype), bshd(2, 150, 2, 64, dtype)
    q = q * 3  # scores large enough for the cap to matter
    kw = dict(softcap=softcap, causal=window is None)
    if window is None:
        out, lse = longattn.attention(q, k, v, return_lse=True, **kw)
        ref, same = reference.attention(q, k, v, **kw), reference.attention(q, k, v, compute_dtype=dtype, **kw)
    else:
        out, lse = longattn.sliding_window_attention(q, k, v, window=window, return_lse=True, **kw)
        ref = reference.sliding_window_attention(q, k, v, window=window, **kw)
        same = reference.sliding_window_attention(q, k, v, window=window, compute_dtype=dtype, **kw)
    check(out, lse, ref, same)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinks(cpu_isa, dtype):
    q, k, v = bshd(2, 90, 4, 32, dtype), bshd(2, 60, 4, 32, dtype), bshd(2, 60, 4, 32, dtype)
    sinks = torch.tensor([-2.0, 0.0, 3.0, 30.0])  # the last one drowns its head's rows
    out, lse = longattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True)
    ref = reference.attention(q, k, v, causal=True, sinks=sinks)
    same = reference.attention(q, k, v, causal=True, sinks=sinks, compute_dtype=dtype)
    check(out, lse, ref, same)
    # Sq > Sk, causal: the first 30 rows see no key: out = 0, lse = the sink
    assert (out[:, :30] == 0).all()
    assert torch.equal(lse[:, :, :30], sinks.view(1, 4, 1).expand(2, 4, 30))


def test_sinks_accept_any_float_dtype_and_no_keys():
    q, k = bshd(1, 5, 2, 16), bshd(1, 0, 2, 16)
    out, lse = longattn.attention(q, k, k, sinks=torch.tensor([1.5, -1.0], dtype=torch.bfloat16), return_lse=True)
    assert (out == 0).all() and torch.equal(lse, torch.tensor([1.5, -1.0]).view(1, 2, 1).expand(1, 2, 5))


def left_and_right_padding(B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, S, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(0, S // 2, (1,), generator=g))
        if b % 2:
            mask[b, :n] = False  # left padding (Hugging Face generation)
        else:
            mask[b, S - n:] = False  # right padding
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask(cpu_isa, dtype, causal):
    B, S = 4, 200
    q, k, v = bshd(B, S, 4, 64, dtype), bshd(B, S, 2, 64, dtype), bshd(B, S, 2, 64, dtype)
    mask = left_and_right_padding(B, S)
    mask[2] = False  # a sequence of padding only: every row empty
    mask[3, ::3] = False  # holes everywhere
    out, lse = longattn.attention(q, k, v, causal=causal, key_padding_mask=mask, return_lse=True)
    ref = reference.attention(q, k, v, causal=causal, key_padding_mask=mask)
    same = reference.attention(q, k, v, causal=causal, key_padding_mask=mask, compute_dtype=dtype)
    check(out, lse, ref, same)
    assert (out[2] == 0).all() and torch.isneginf(lse[2]).all()


@pytest.mark.parametrize("window", [(16, 16), (40, 0), (-1, 7)])
@pytest.mark.parametrize("dilation", [1, 3])
def test_key_padding_with_windows_dilation_and_global_tokens(cpu_isa, window, dilation):
    B, S = 3, 300
    q, k, v = bshd(B, S, 4, 32), bshd(B, S, 4, 32), bshd(B, S, 4, 32)
    mask = left_and_right_padding(B, S, seed=1)
    g = torch.zeros(B, S, dtype=torch.bool)
    g[:, [0, 150]] = True
    g[0, S - 1] = True  # a global token that is padding: hidden as a key, its row still attends the real keys
    mask[0, S - 1] = False
    kw = dict(window=window, dilation=dilation, global_tokens=g, key_padding_mask=mask, softcap=10.0,
              sinks=torch.linspace(-1, 1, 4))
    out, lse = longattn.sliding_window_attention(q, k, v, return_lse=True, **kw)
    check(out, lse, reference.sliding_window_attention(q, k, v, **kw),
          reference.sliding_window_attention(q, k, v, compute_dtype=torch.float32, **kw))


def test_left_padded_batch_equals_unpadded_rows():
    """What a Hugging Face left-padded batch needs: the real tokens' rows equal attention over the real tokens only."""
    S, pad = 64, 10
    q, k, v = bshd(1, S, 2, 32), bshd(1, S, 2, 32), bshd(1, S, 2, 32)
    mask = torch.ones(1, S, dtype=torch.bool)
    mask[0, :pad] = False
    out = longattn.attention(q, k, v, causal=True, key_padding_mask=mask)
    want = longattn.attention(q[:, pad:], k[:, pad:], v[:, pad:], causal=True)
    torch.testing.assert_close(out[:, pad:], want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kw,error,match", [
    ({"softcap": -1.0}, ValueError, r"softcap: got -1.0, expected a finite number from 0"),
    ({"softcap": float("nan")}, ValueError, r"softcap: got nan"),
    ({"softcap": "1"}, TypeError, r"softcap: expected a real number"),
    ({"sinks": torch.zeros(3)}, ValueError, r"sinks: got shape \(3\); expected \(heads_q,\) = \(4,\)"),
    ({"sinks": torch.zeros(4, dtype=torch.int32)}, ValueError, r"sinks: dtype torch.int32"),
    ({"sinks": [0.0] * 4}, TypeError, r"sinks: expected a torch.Tensor"),
    ({"key_padding_mask": torch.ones(2, 9, dtype=torch.bool)}, ValueError,
     r"key_padding_mask: got shape \(2, 9\); expected \(batch, seq\) = \(2, 10\)"),
    ({"key_padding_mask": torch.ones(2, 10)}, ValueError, r"key_padding_mask: dtype torch.float32"),
])
def test_option_errors(kw, error, match):
    q, k = bshd(2, 8, 4, 16), bshd(2, 10, 2, 16)
    with pytest.raises(error, match=match):
        longattn.attention(q, k, k, **kw)


# ---- variable-length batches ----------------------------------------------------------------------------------------

def packed(lengths, H, D, dtype=torch.float32):
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return torch.randn(int(cu[-1]), H, D).to(dtype), cu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (10, 3)), (True, (30, 0))])
def test_varlen_matches_the_oracle(cpu_isa, dtype, causal, window):
    lq, lk = [5, 0, 130, 1, 64, 200], [9, 3, 130, 70, 1, 180]  # empty sequences, Sq > Sk and Sq < Sk
    q, cu_q = packed(lq, 4, 64, dtype)
    k, cu_k = packed(lk, 2, 64, dtype)
    v, _ = packed(lk, 2, 64, dtype)
    kw = dict(causal=causal, window=window, softcap=20.0, sinks=torch.tensor([0.5, -0.5, 1.0, 0.0]))
    out, lse = longattn.varlen_attention(q, k, v, cu_q, cu_k, return_lse=True, **kw)
    assert out.shape == (q.shape[0], 4, 64) and lse.shape == (4, q.shape[0])
    check(out, lse, reference.varlen_attention(q, k, v, cu_q, cu_k, **kw),
          reference.varlen_attention(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw))


def test_varlen_equals_per_sequence_runs():
    lengths = [33, 200, 1, 77]
    q, cu = packed(lengths, 4, 32)
    k, _ = packed(lengths, 4, 32)
    v, _ = packed(lengths, 4, 32)
    out = longattn.varlen_attention(q, k, v, cu, cu, max_seqlen_q=200, max_seqlen_k=200, causal=True)
    for b in range(len(lengths)):
        s, e = int(cu[b]), int(cu[b + 1])
        want = longattn.attention(q[None, s:e], k[None, s:e], v[None, s:e], causal=True)[0]
        torch.testing.assert_close(out[s:e], want, atol=2e-6, rtol=1e-5)


def test_varlen_errors():
    q, cu = packed([4, 6], 2, 16)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: sequence 1 has 6 rows, more than the max_seqlen hint 5"):
        longattn.varlen_attention(q, q, q, cu, cu, max_seqlen_q=5)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: decreases at index 2 \(7 then 5\)"):
        longattn.varlen_attention(q, q, q, cu, torch.tensor([0, 7, 5], dtype=torch.int32), max_seqlen_k=10)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: ends at 9, expected the total row count 10"):
        longattn.varlen_attention(q, q, q, cu, torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_q: got torch.int64"):
        longattn.varlen_attention(q, q, q, cu.long(), cu)
    with pytest.raises(ValueError, match=r"q: expected a 3-D tensor"):
        longattn.varlen_attention(q[None], q, q, cu, cu)
    with pytest.raises(ValueError, match=r"cu_seqlens_q, cu_seqlens_k: 3 and 2 offsets"):
        longattn.varlen_attention(q, q, q, cu, torch.tensor([0, 10], dtype=torch.int32))


# ---- KV cache -----------------------------------------------------------------------------------------------------------

def make_cache(B, capacity, Hk, D, dtype, page=None, seed=0):
    """A cache full of NaN (a server's torch.empty cache), contiguous or paged with a shuffled block table."""
    g = torch.Generator().manual_seed(seed)
    if page is None:
        kc = torch.full((B, capacity, Hk, D), float("nan"), dtype=dtype)
        return kc, kc.clone(), None
    per_seq = -(-capacity // page)
    n_blocks = B * per_seq + 3  # spare blocks the table never names
    kc = torch.full((n_blocks, page, Hk, D), float("nan"), dtype=dtype)
    table = torch.randperm(n_blocks, generator=g)[:B * per_seq].view(B, per_seq).to(torch.int32)
    return kc, kc.clone(), table


def fill_cache(kc, vc, table, lengths, dtype):
    """Writes random tokens 0 .. lengths[b] - 1 into each sequence's cache."""
    for b, n in enumerate(lengths):
        for t in range(n):
            blk, row = (int(table[b, t // kc.shape[1]]), t % kc.shape[1]) if table is not None else (b, t)
            kc[blk, row] = torch.randn(kc.shape[2:]).to(dtype)
            vc[blk, row] = torch.randn(vc.shape[2:]).to(dtype)


@pytest.mark.parametrize("page", [None, 1, 16, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kvcache_decode_matches_the_oracle(cpu_isa, page, dtype):
    B, Hq, Hk, D, cap = 3, 8, 2, 64, 300
    lengths = [0, 37, 250]  # an empty cache, uneven lengths
    kc, vc, table = make_cache(B, cap, Hk, D, dtype, page)
    fill_cache(kc, vc, table, lengths, dtype)
    q = bshd(B, 1, Hq, D, dtype)
    knew, vnew = bshd(B, 1, Hk, D, dtype), bshd(B, 1, Hk, D, dtype)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    ref = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table)
    same = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table, compute_dtype=dtype)
    out, lse = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k=knew, v=vnew, block_table=table,
                                               return_lse=True)
    check(out, lse, ref, same)
    # appended in place, row by row; nothing else changed
    torch.testing.assert_close(kc, ref[2], equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(vc, ref[3], equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("page", [None, 16])
@pytest.mark.parametrize("sq,causal,window", [(4, True, (-1, 0)), (5, False, (-1, -1)), (3, True, (40, 0)),
                                              (6, False, (8, 2))])
def test_kvcache_several_queries_bottom_right(cpu_isa, page, sq, causal, window):
    B, Hq, Hk, D, cap = 2, 4, 4, 32, 200
    lengths = [10, 150]
    kc, vc, table = make_cache(B, cap, Hk, D, torch.float32, page)
    fill_cache(kc, vc, table, lengths, torch.float32)
    q = bshd(B, sq, Hq, D)
    knew, vnew = bshd(B, sq, Hk, D), bshd(B, sq, Hk, D)  # speculative decoding: sq new tokens, attended causally
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    kw = dict(causal=causal, window=window, softcap=30.0, sinks=torch.tensor([1.0, 0.0, -1.0, 2.0]))
    ref = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table, **kw)
    same = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table,
                                            compute_dtype=torch.float32, **kw)
    out, lse = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k=knew, v=vnew, block_table=table,
                                               return_lse=True, **kw)
    check(out, lse, ref, same)


def test_kvcache_without_new_tokens_and_int_seqlens():
    kc, vc, _ = make_cache(2, 64, 2, 16, torch.float32)
    fill_cache(kc, vc, None, [20, 20], torch.float32)
    before = kc.clone()
    q = bshd(2, 1, 4, 16)
    out, lse = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=20, return_lse=True)
    ref = reference.attention_with_kvcache(q, kc, vc, torch.tensor([20, 20], dtype=torch.int32))
    check(out, lse, ref, ref)
    assert torch.equal(kc.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("page", [None, 16])
def test_every_num_splits_agrees(page):
    B, Hq, Hk, D, cap = 1, 8, 1, 128, 3000
    kc, vc, table = make_cache(B, cap, Hk, D, torch.float32, page)
    fill_cache(kc, vc, table, [2900], torch.float32)
    q = bshd(B, 1, Hq, D)
    seqlens = torch.tensor([2900], dtype=torch.int32)
    ref = reference.attention_with_kvcache(q, kc, vc, seqlens, block_table=table)
    results = {}
    for n in (0, 1, 2, 3, 7, 64):
        out, lse = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=table, num_splits=n,
                                                   return_lse=True)
        check(out, lse, ref, ref)
        results[n] = out
    for n, out in results.items():
        torch.testing.assert_close(out, results[1], atol=2e-6, rtol=1e-5)


def test_splits_are_bitwise_identical_across_thread_counts():
    kc, vc, _ = make_cache(2, 2048, 2, 64, torch.bfloat16)
    fill_cache(kc, vc, None, [2000, 1500], torch.bfloat16)
    q = bshd(2, 1, 4, 64, torch.bfloat16)
    seqlens = torch.tensor([2000, 1500], dtype=torch.int32)
    want = None
    for threads in (1, 2, 3):
        longattn.set_num_threads(threads)
        out = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, num_splits=4)
        want = out if want is None else want
        assert torch.equal(out, want)


def test_capacity_overflow_is_rejected_before_any_write():
    kc, vc, table = make_cache(2, 32, 2, 16, torch.float32, page=8)
    fill_cache(kc, vc, table, [30, 5], torch.float32)
    before_k, before_v = kc.clone(), vc.clone()
    q, knew = bshd(2, 3, 2, 16), bshd(2, 3, 2, 16)
    with pytest.raises(ValueError, match=r"cache_seqlens: sequence 0 holds 30 tokens; with 3 new ones it would need 33 "
                                         r"rows, more than the cache's capacity 32 \(nothing was written\)"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([30, 5], dtype=torch.int32), k=knew,
                                        v=knew, block_table=table)
    assert torch.equal(kc.nan_to_num(), before_k.nan_to_num()) and torch.equal(vc.nan_to_num(), before_v.nan_to_num())


def test_kvcache_errors():
    kc, vc, table = make_cache(2, 32, 2, 16, torch.float32, page=8)
    q = bshd(2, 1, 2, 16)
    seqlens = torch.tensor([3, 4], dtype=torch.int32)
    bad = table.clone()
    bad[1, 0] = 99
    with pytest.raises(ValueError, match=r"block_table: entry \[1, 0\] is 99, expected a block index in 0..10"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=bad)
    with pytest.raises(ValueError, match=r"cache_seqlens: got -1 for sequence 0, expected >= 0"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([-1, 0], dtype=torch.int32),
                                        block_table=table)
    with pytest.raises(ValueError, match=r"num_splits: got 65; expected an int 0..64"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=table, num_splits=65)
    with pytest.raises(ValueError, match=r"k, v: give both"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=table, k=q)
    with pytest.raises(ValueError, match=r"k_cache: the last dimension has stride"):
        longattn.attention_with_kvcache(q, kc.transpose(2, 3), vc, cache_seqlens=seqlens, block_table=table)
    with pytest.raises(ValueError, match=r"block_table: got torch.int64"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=table.long())
    with pytest.raises(ValueError, match=r"cache_seqlens: got torch.int64"):
        longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens.long(), block_table=table)


def test_kvcache_under_torch_compile_mutates_the_cache():
    torch._dynamo.reset()
    kc, vc, _ = make_cache(1, 16, 1, 8, torch.float32)
    fill_cache(kc, vc, None, [4], torch.float32)
    kc, vc = kc.nan_to_num(), vc.nan_to_num()
    q, knew, vnew = bshd(1, 1, 2, 8), bshd(1, 1, 1, 8), bshd(1, 1, 1, 8)
    seqlens = torch.tensor([4], dtype=torch.int32)

    def step(q, kc, vc, knew, vnew):
        return longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k=knew, v=vnew) * 1.0

    want_kc = kc.clone()
    want_kc[0, 4] = knew[0, 0]
    out = torch.compile(step, fullgraph=True)(q, kc, vc, knew, vnew)
    assert torch.equal(kc, want_kc) and vc[0, 4].equal(vnew[0, 0])
    ref = reference.attention_with_kvcache(q, want_kc, vc, torch.tensor([5], dtype=torch.int32))
    torch.testing.assert_close(out.double(), ref[0], atol=1e-6, rtol=1e-5)


def test_custom_ops_pass_opcheck():
    q, cu = packed([3, 5], 2, 16)
    torch.library.opcheck(torch.ops.longattn.varlen_attention_fwd.default,
                          (q, q, q, cu, cu, 5, 5, 0.25, True, -1, -1, 0.0, None, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    kc = torch.randn(2, 16, 2, 16)
    qd = bshd(2, 1, 2, 16)
    torch.library.opcheck(torch.ops.longattn.attention_with_kvcache_fwd.default,
                          (qd, kc, kc.clone(), torch.tensor([3, 4], dtype=torch.int32), qd.clone(), qd.clone(), None,
                           0.25, True, -1, -1, 0.0, None, 0, True),
                          test_utils=("test_schema", "test_faketensor"))
