"""The AMX tile path of the CPU engine (bfloat16 / float16 on TDPBF16PS / TDPFP16PS tiles) against the float64
oracle. `amx` runs the instructions and needs a CPU with AMX-BF16 (Sapphire Rapids and later) whose OS grants the
tile state; `amx_model` runs the same path with each tile instruction replaced by a model of its SDM definition
(csrc/cpu/amx.h), on any AVX2 host, so the packing, tile shapes and strides are tested everywhere. The shapes
straddle the tile sizes: head dims around multiples of 32 (a tile row is 32 values), key and query tails of a
16-row tile, V tiles entered at odd key offsets (band edges, packed GQA heads, residue classes)."""

import pytest
import torch

import longattn
from longattn import _C, reference

from helpers import assert_matches_oracle, bshd, p_rounding

AMX_ISAS = [pytest.param("amx_model", id="amx_model"),
            pytest.param("amx", id="amx", marks=pytest.mark.skipif(
                not _C.cpu_isa_supported("amx"),
                reason="amx: this CPU or OS has no usable AMX-BF16 (CPUID, XCR0 or the arch_prctl permission), "
                       "or this build has no AMX"))]

# conftest's cpu_isa fixture, limited to the AMX builds
amx_isas = pytest.mark.parametrize("cpu_isa", AMX_ISAS, indirect=True)


def tiles_run(dtype):
    """The active ISA runs dtype on tiles (float16 on `amx` only with AMX-FP16)."""
    return p_rounding(dtype) is not None


def check(q, k, v, op="window", **kw):
    """longattn vs float64, held to 2x the error of PyTorch doing the engine's math: float32 scores and softmax
    on the rounded inputs, P rounded to the input dtype before P·V."""
    p_dtype = p_rounding(q.dtype)
    ours, ref = ((longattn.attention, reference.attention) if op == "dense" else
                 (longattn.sliding_window_attention, reference.sliding_window_attention))
    out, lse = ours(q, k, v, return_lse=True, **kw)
    ref_out, ref_lse = ref(q, k, v, **kw)
    pt_out, pt_lse = ref(q, k, v, compute_dtype=torch.float32, p_dtype=p_dtype, **kw)
    assert_matches_oracle(out, ref_out, pt_out.to(q.dtype), "out")
    assert_matches_oracle(lse, ref_lse, pt_lse, "lse")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim,head_dim_v", [(1, 1), (8, 8), (31, 17), (32, 32), (33, 33), (64, 64), (80, 48),
                                                 (96, 96), (128, 128), (160, 40), (256, 256)])
@amx_isas
def test_dense_head_dims_and_tile_tails(cpu_isa, dtype, head_dim, head_dim_v):
    q, k, v = bshd(1, 77, 2, head_dim, dtype), bshd(1, 145, 2, head_dim, dtype), bshd(1, 145, 2, head_dim_v, dtype)
    check(q, k, v, op="dense")
    check(q, k, v, op="dense", causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@amx_isas
def test_dense_gqa_strided_and_long(cpu_isa, dtype):
    q = bshd(2, 300, 6, 64, dtype, layout="bhsd")
    k, v = bshd(2, 300, 2, 64, dtype, layout="bhsd"), bshd(2, 300, 2, 64, dtype, layout="bhsd")
    check(q, k, v, op="dense", causal=True)
    q, k, v = bshd(1, 17, 4, 128, dtype), bshd(1, 1100, 1, 128, dtype), bshd(1, 1100, 1, 128, dtype)
    check(q, k, v, op="dense")  # Sq << Sk: one query tile, many key tiles (the online softmax across tiles)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", [(0, 0), (5, 0), (20, 11), (63, 64), (100, 7)])
@amx_isas
def test_windows_dilation_and_global_tokens(cpu_isa, dtype, window):
    q, k, v = bshd(1, 301, 4, 33, dtype), bshd(1, 301, 2, 33, dtype), bshd(1, 301, 2, 17, dtype)
    check(q, k, v, window=window)
    check(q, k, v, window=(window[0], 0), causal=True, dilation=[1, 2, 3, 5])
    g = torch.zeros(1, 257, dtype=torch.bool)
    g[0, [0, 3, 130, 256]] = True
    q, k, v = (bshd(1, 257, 2, 65, dtype) for _ in range(3))
    check(q, k, v, window=window, global_tokens=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@amx_isas
def test_serving_features(cpu_isa, dtype):
    q, k, v = bshd(2, 150, 4, 64, dtype), bshd(2, 150, 2, 64, dtype), bshd(2, 150, 2, 64, dtype)
    mask = torch.ones(2, 150, dtype=torch.bool)
    mask[1, 97:] = False
    check(q, k, v, op="dense", key_padding_mask=mask, causal=True)
    check(q, k, v, op="dense", softcap=5.0)
    check(q, k, v, op="dense", sinks=torch.randn(4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@amx_isas
def test_lsh_chunks(cpu_isa, dtype):
    # odd chunk length and head dims: an odd last key, pairs past the head dim, chunks of more than one key tile
    for (S, D, Dv, chunk, before, after) in [(198, 33, 17, 33, 1, 0), (480, 64, 64, 160, 1, 1), (128, 8, 8, 16, 0, 0)]:
        qk, v = (torch.randn(2, S, 2, D) * 0.5).to(dtype), torch.randn(2, S, 2, Dv).to(dtype)
        kw = dict(chunk_length=chunk, chunks_before=before, chunks_after=after, causal=True)
        out, lse, buckets = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=6, seed=3, return_lse=True,
                                                   return_buckets=True, **kw)
        ref_out, ref_lse = reference.lsh_attention(qk, v, buckets, **kw)
        pt_out, pt_lse = reference.lsh_attention(qk, v, buckets, compute_dtype=torch.float32,
                                                 p_dtype=p_rounding(dtype), **kw)
        assert_matches_oracle(out, ref_out, pt_out.to(dtype), "out")
        assert_matches_oracle(lse, ref_lse, pt_lse, "lse")


@amx_isas
def test_float32_and_decode_run_the_base_engine_bit_for_bit(cpu_isa):
    """amx builds hand float32 and the decode path to the engine they extend (avx512_bf16 / avx2): same bits."""
    base = "avx2" if cpu_isa == "amx_model" else "avx512_bf16"
    q, k, v = bshd(1, 200, 2, 64), bshd(1, 200, 2, 64), bshd(1, 200, 2, 64)
    got = longattn.attention(q, k, v, causal=True)
    kc, vc = bshd(2, 64, 2, 64, torch.bfloat16), bshd(2, 64, 2, 64, torch.bfloat16)
    qd, lens = bshd(2, 1, 4, 64, torch.bfloat16), torch.tensor([40, 64], dtype=torch.int32)
    got_decode = longattn.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens)
    _C.set_cpu_isa(base)
    assert torch.equal(got, longattn.attention(q, k, v, causal=True))
    assert torch.equal(got_decode, longattn.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens))


@amx_isas
def test_tiles_for_each_dtype_as_reported(cpu_isa):
    assert tiles_run(torch.bfloat16)
    assert tiles_run(torch.float16) == (cpu_isa == "amx_model" or _C.cpu_amx_fp16_supported())
    assert not tiles_run(torch.float32)
    caps = longattn.capabilities()
    assert cpu_isa in caps["cpu_isa_compiled"]
    assert caps["cpu_amx_fp16"] == (_C.cpu_isa_supported("amx") and _C.cpu_amx_fp16_supported())


def test_amx_model_is_never_the_default():
    assert _C.best_cpu_isa() != "amx_model"
    assert longattn.capabilities()["cpu_isa_best"] in ("amx", "avx512_bf16", "avx512", "avx2", "scalar")


def test_unknown_isa_name_is_refused_with_the_accepted_names():
    with pytest.raises(ValueError, match="amx2.*scalar, avx2, avx512, avx512_bf16, amx or amx_model"):
        _C.set_cpu_isa("amx2")
