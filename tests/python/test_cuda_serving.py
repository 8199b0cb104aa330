"""The serving features on the CUDA backend (a GPU when there is one, else the CUDA emulator with its memory checker):
softcap, sinks, key padding, variable-length batches and KV-cache decoding, against the float64 oracle. The CUDA rules
for index tensors are tested too: their values are not read back to the host, and a bad one may give a wrong row but
never an access outside the tensors (the emulator's checker would raise)."""

import pytest
import torch

import longattn
from longattn import reference, testing

from helpers import assert_matches_oracle
from test_cuda import GPU, EMULATOR, dev  # noqa: F401 (the dev fixture)
from test_serving import fill_cache, make_cache, packed

pytestmark = pytest.mark.skipif(not (GPU or EMULATOR), reason="needs a CUDA GPU or a build with the emulator")

TC = [torch.float16, torch.bfloat16]


def to(dev, *ts):
    return [None if t is None else t.to(dev) for t in ts]


def check(out, lse, ref, same):
    assert_matches_oracle(out.cpu(), ref[0], same[0], "out")
    assert_matches_oracle(lse.cpu(), ref[1], same[1].float(), "lse")


@pytest.mark.parametrize("dtype", TC + [torch.float32])
@pytest.mark.parametrize("window", [None, (20, 5)])
def test_softcap_sinks_and_padding(dev, dtype, window):
    B, S = 3, 150
    q, k, v = (torch.randn(B, S, 4, 64).to(dtype) * 2 for _ in range(3))
    k, v = k[:, :, :2].contiguous(), v[:, :, :2].contiguous()
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, :40] = False  # left padding
    mask[1, 100:] = False  # right padding
    mask[2, ::5] = False
    kw = dict(softcap=8.0, sinks=torch.tensor([0.5, -1.0, 2.0, 0.0]), key_padding_mask=mask)
    qd, kd, vd = to(dev, q, k, v)
    dkw = dict(kw, sinks=kw["sinks"].to(dev), key_padding_mask=mask.to(dev))
    if window is None:
        out, lse = longattn.attention(qd, kd, vd, causal=True, return_lse=True, **dkw)
        ref = reference.attention(q, k, v, causal=True, **kw)
        same = reference.attention(q, k, v, causal=True, compute_dtype=dtype, **kw)
    else:
        out, lse = longattn.sliding_window_attention(qd, kd, vd, window=window, return_lse=True, **dkw)
        ref = reference.sliding_window_attention(q, k, v, window=window, **kw)
        same = reference.sliding_window_attention(q, k, v, window=window, compute_dtype=dtype, **kw)
    check(out, lse, ref, same)


def test_padding_with_global_tokens_and_dilation(dev):
    B, S = 2, 260
    q, k, v = (torch.randn(B, S, 4, 32).half() for _ in range(3))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 200:] = False
    mask[1, :64] = False  # a whole key tile of padding: skipped
    g = torch.zeros(B, S, dtype=torch.bool)
    g[:, [3, 130]] = True
    kw = dict(window=(8, 8), dilation=[1, 2, 3, 1], global_tokens=g, key_padding_mask=mask)
    out, lse = longattn.sliding_window_attention(*to(dev, q, k, v), return_lse=True,
                                                 **dict(kw, global_tokens=g.to(dev), key_padding_mask=mask.to(dev)))
    check(out, lse, reference.sliding_window_attention(q, k, v, **kw),
          reference.sliding_window_attention(q, k, v, compute_dtype=torch.float16, **kw))


@pytest.mark.parametrize("dtype", TC + [torch.float32])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (10, 3))])
def test_varlen(dev, dtype, causal, window):
    lq, lk = [5, 0, 130, 1, 70], [9, 3, 130, 70, 1]
    q, cu_q = packed(lq, 4, 64, dtype)
    k, cu_k = packed(lk, 2, 64, dtype)
    v, _ = packed(lk, 2, 64, dtype)
    kw = dict(causal=causal, window=window, softcap=20.0)
    out, lse = longattn.varlen_attention(*to(dev, q, k, v, cu_q, cu_k), max_seqlen_q=130, max_seqlen_k=130,
                                         return_lse=True, **kw)
    check(out, lse, reference.varlen_attention(q, k, v, cu_q, cu_k, **kw),
          reference.varlen_attention(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw))


def test_varlen_small_hints_cost_speed_not_rows(dev):
    q, cu = packed([10, 200], 2, 64, torch.float16)
    out = longattn.varlen_attention(*to(dev, q, q, q, cu, cu), max_seqlen_q=1, max_seqlen_k=1, causal=True)
    ref = reference.varlen_attention(q, q, q, cu, cu, causal=True)
    same = reference.varlen_attention(q, q, q, cu, cu, causal=True, compute_dtype=torch.float16)
    assert_matches_oracle(out.cpu(), ref[0], same[0], "out")


@pytest.mark.parametrize("page", [None, 1, 16, 256])
@pytest.mark.parametrize("dtype", TC + [torch.float32])
def test_kvcache_decode(dev, page, dtype):
    B, Hq, Hk, D, cap = 3, 8, 2, 64, 300
    lengths = [0, 37, 250]
    kc, vc, table = make_cache(B, cap, Hk, D, dtype, page)
    fill_cache(kc, vc, table, lengths, dtype)
    q = torch.randn(B, 1, Hq, D).to(dtype)
    knew, vnew = (torch.randn(B, 1, Hk, D).to(dtype) for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    ref = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table)
    same = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table,
                                            compute_dtype=dtype)
    kcd, vcd = to(dev, kc, vc)
    out, lse = longattn.attention_with_kvcache(*to(dev, q), kcd, vcd, cache_seqlens=seqlens.to(dev),
                                               k=knew.to(dev), v=vnew.to(dev),
                                               block_table=None if table is None else table.to(dev),
                                               return_lse=True)
    check(out, lse, ref, same)
    torch.testing.assert_close(kcd.cpu(), ref[2], equal_nan=True, atol=0, rtol=0)  # appended row by row
    torch.testing.assert_close(vcd.cpu(), ref[3], equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("page", [None, 16])
def test_kvcache_several_queries_sinks_and_every_num_splits(dev, page):
    B, Hq, Hk, D, cap = 2, 4, 2, 32, 700
    lengths = [10, 600]
    kc, vc, table = make_cache(B, cap, Hk, D, torch.bfloat16, page)
    fill_cache(kc, vc, table, lengths, torch.bfloat16)
    q = torch.randn(B, 3, Hq, D).bfloat16()
    knew, vnew = (torch.randn(B, 3, Hk, D).bfloat16() for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    kw = dict(causal=True, window=(300, 0), softcap=30.0, sinks=torch.tensor([1.0, 0.0, -1.0, 2.0]))
    ref = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table, **kw)
    same = reference.attention_with_kvcache(q, kc, vc, seqlens, k=knew, v=vnew, block_table=table,
                                            compute_dtype=torch.bfloat16, **kw)
    results = []
    for n in (0, 1, 3, 8):
        kcd, vcd = to(dev, kc, vc)
        out, lse = longattn.attention_with_kvcache(
            q.to(dev), kcd, vcd, cache_seqlens=seqlens.to(dev), k=knew.to(dev), v=vnew.to(dev),
            block_table=None if table is None else table.to(dev), num_splits=n, return_lse=True,
            **dict(kw, sinks=kw["sinks"].to(dev)))
        check(out, lse, ref, same)
        results.append(out.float().cpu())
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], atol=2e-2, rtol=2e-2)


def test_bad_index_values_never_reach_outside_the_tensors():
    """On CUDA the values of block_table and cache_seqlens are not checked (no device sync); every access is bounded
    instead. On the emulator, the memory checker fails the call if anything reads or writes outside the tensors."""
    kc, vc, table = make_cache(2, 64, 1, 32, torch.float16, page=16)
    fill_cache(kc, vc, table, [40, 40], torch.float16)
    kc, vc = kc.nan_to_num(), vc.nan_to_num()
    bad = table.clone()
    bad[0, 1] = 10_000  # a block index outside the cache: its rows read as zeros
    bad[1, 0] = -7
    q = torch.randn(2, 1, 2, 32).half()
    seqlens = torch.tensor([1000, -5], dtype=torch.int32)  # past the capacity, and negative: clamped
    knew = torch.randn(2, 1, 1, 32).half()
    if GPU:
        out = longattn.attention_with_kvcache(*to("cuda", q, kc, vc), cache_seqlens=seqlens.cuda(), k=knew.cuda(),
                                              v=knew.cuda(), block_table=bad.cuda())
    else:
        with pytest.raises(ValueError, match="cache_seqlens"):  # the CPU backend checks the values and refuses
            longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k=knew, v=knew, block_table=bad)
        with testing.cuda_emulator():  # the CUDA backend does not read them back: bounded accesses instead
            out = longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens, k=knew, v=knew, block_table=bad)
    assert out.shape == (2, 1, 2, 32) and torch.isfinite(out.float().cpu()).all()
