"""lsh_attention on the CUDA backend: against the float64 oracle and the CPU backend (identical buckets).

Every case runs on a CUDA GPU when there is one, otherwise on longattn's CUDA emulator with its memory checker on
(the same host dispatch and kernel sources, on the CPU), so CI always runs the CUDA LSH kernels. Outputs are
allocated filled with NaN, so a row a kernel never writes fails the comparison.
"""

import pytest
import torch

import longattn
from longattn import reference, testing

from helpers import assert_matches_oracle
from test_cuda import EMULATOR, GPU, dev, emulator_only, gpu_only  # noqa: F401 (the dev fixture)

pytestmark = pytest.mark.skipif(not (GPU or EMULATOR), reason="needs a CUDA GPU (compute capability >= 8.0 with a "
                                                              "CUDA build of longattn) or a build with the emulator")

TC_DTYPES = [torch.float16, torch.bfloat16]


def inputs(B, S, H, D, Dv=None, dtype=torch.float32):
    return torch.randn(B, S, H, D).to(dtype), torch.randn(B, S, H, Dv or D).to(dtype)


def check(dev, qk, v, *, n_hashes, n_buckets, chunk_length, key_padding_mask=None, seed=0, **kw):
    """The CUDA backend vs the float64 oracle (held to 2x PyTorch's own error in the dtype) on the buckets the CUDA
    hashing chose, and those buckets vs the CPU backend's for the same inputs and rotations: identical."""
    H, D = qk.shape[2], qk.shape[3]
    rotations = longattn.lsh_rotations(H, D, n_hashes, n_buckets, seed=seed)
    args = dict(n_hashes=n_hashes, n_buckets=n_buckets, chunk_length=chunk_length, return_lse=True,
                return_buckets=True, **kw)
    mask_dev = None if key_padding_mask is None else key_padding_mask.to(dev)
    out, lse, buckets = longattn.lsh_attention(qk.to(dev), v.to(dev), rotations=rotations.to(dev),
                                               key_padding_mask=mask_dev, **args)
    assert out.device.type == dev.type and out.dtype == qk.dtype and out.shape == v.shape and out.is_contiguous()
    assert lse.dtype == torch.float32 and buckets.dtype == torch.int64
    out, lse, buckets = out.cpu(), lse.cpu(), buckets.cpu()
    with _cpu_backend():
        _, _, cpu_buckets = longattn.lsh_attention(qk, v, rotations=rotations,
                                                               key_padding_mask=key_padding_mask, **args)
    assert torch.equal(buckets, cpu_buckets), f"buckets differ from the CPU's at {(buckets != cpu_buckets).sum()} items"
    ref_kw = dict(chunk_length=chunk_length, key_padding_mask=key_padding_mask,
                  **{k: kw[k] for k in ("chunks_before", "chunks_after", "causal") if k in kw})
    ref_out, ref_lse = reference.lsh_attention(qk, v, buckets, **ref_kw)
    if qk.dtype == torch.float32:
        same_out, same_lse = reference.lsh_attention(qk, v, buckets, compute_dtype=torch.float32, **ref_kw)
    else:  # tensor cores: float32 scores and softmax, P rounded to the dtype before P·V (as FlashAttention)
        same_out, same_lse = same_math(qk, v, buckets, **ref_kw)
    assert_matches_oracle(out, ref_out, same_out, "out")
    assert_matches_oracle(lse, ref_lse, same_lse.float(), "lse")
    return out, lse, buckets


def same_math(qk, v, buckets, **kw):
    """The tensor-core kernel's arithmetic done by PyTorch: inputs in their dtype, float32 scores and softmax, the
    probabilities rounded to the dtype before they multiply v, the output rounded to the dtype."""
    out, lse = reference.lsh_attention(qk, v, buckets, compute_dtype=torch.float32, p_dtype=qk.dtype, **kw)
    return out.to(qk.dtype), lse


class _cpu_backend:
    """Leaves the emulator for the CPU backend's run (inside it, the emulator serves CPU tensors)."""

    def __enter__(self):
        from longattn import _backend
        self.depth = _backend._emulation_depth
        _backend._emulation_depth = 0

    def __exit__(self, *exc):
        from longattn import _backend
        _backend._emulation_depth = self.depth


@pytest.mark.parametrize("dtype", TC_DTYPES + [torch.float32])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256])
def test_dtypes_head_dims(dev, dtype, head_dim):
    qk, v = inputs(1, 128, 2, head_dim, dtype=dtype)
    check(dev, qk, v, n_hashes=2, n_buckets=4, chunk_length=32)


@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rounds_and_causal(dev, n_hashes, causal, dtype):
    qk, v = inputs(2, 192, 2, 64, dtype=dtype)
    check(dev, qk, v, n_hashes=n_hashes, n_buckets=6, chunk_length=32, causal=causal)


@pytest.mark.parametrize("before,after", [(0, 0), (0, 1), (2, 1), (3, 3)])
def test_adjacent_chunks_wrap(dev, before, after):
    # (3, 3) on 4 chunks per round wraps around every round's chunks and sees chunks twice (no deduplication)
    qk, v = inputs(1, 128, 2, 32, dtype=torch.float16)
    check(dev, qk, v, n_hashes=2, n_buckets=4, chunk_length=32, chunks_before=before, chunks_after=after)


@pytest.mark.parametrize("chunk_length", [16, 96, 128])
def test_chunks_shorter_and_longer_than_a_tile(dev, chunk_length):
    # tiles are 64 sorted rows: a chunk of 16 fills part of one, 96 takes a full and a partial tile, 128 two
    qk, v = inputs(1, 384, 2, 64, dtype=torch.bfloat16)
    check(dev, qk, v, n_hashes=2, n_buckets=8, chunk_length=chunk_length)


@pytest.mark.parametrize("dtype", TC_DTYPES + [torch.float32])
def test_padding_mask_and_factorized_buckets(dev, dtype):
    qk, v = inputs(2, 256, 2, 64, dtype=dtype)
    mask = torch.ones(2, 256, dtype=torch.bool)
    mask[0, 200:] = False
    mask[1, :30] = False
    mask[1, 100:107] = False
    _, _, buckets = check(dev, qk, v, n_hashes=2, n_buckets=[4, 6], chunk_length=32, key_padding_mask=mask,
                          causal=True)
    assert (buckets[0, :, :, 200:] == 24).all() and (buckets[0, :, :, :200] < 24).all()


def test_hash_ties_pick_the_first_index(dev):
    # small integers: projections are exact and tie often, within xR, within -xR and between the two halves; the
    # first maximal index of concat(xR, -xR) wins, on CUDA as in the oracle (and the CPU)
    g = torch.Generator().manual_seed(0)
    qk = torch.randint(-2, 3, (1, 128, 2, 32), generator=g).float()
    rotations = torch.randint(-1, 2, (2, 32, 2, 6), generator=g).float()
    rotations[..., 1] = rotations[..., 0]  # a duplicated column: a tie on every token
    for n_buckets in (12, [4, 2, 6]):
        _, got = longattn.lsh_attention(qk.to(dev), qk.to(dev), n_hashes=2, n_buckets=n_buckets, chunk_length=32,
                                        rotations=rotations.to(dev), return_buckets=True)
        want = reference.lsh_hash(qk, rotations, n_buckets=n_buckets)
        assert torch.equal(got.cpu(), want)


def test_one_round_without_hashing(dev):
    # S <= chunk_length: one round of ordinary attention over the whole sequence (S need not be a multiple of 64)
    for S, dtype in [(50, torch.float16), (64, torch.bfloat16), (37, torch.float32)]:
        qk, v = inputs(2, S, 2, 64, dtype=dtype)
        out, lse = longattn.lsh_attention(qk.to(dev), v.to(dev), n_hashes=4, n_buckets=8, chunk_length=64,
                                          causal=True, return_lse=True)
        buckets = torch.zeros(2, 2, 4, S, dtype=torch.int64)
        ref = reference.lsh_attention(qk, v, buckets, chunk_length=64, causal=True)
        same = (reference.lsh_attention(qk, v, buckets, chunk_length=64, causal=True, compute_dtype=dtype)
                if dtype == torch.float32 else same_math(qk, v, buckets, chunk_length=64, causal=True))
        assert_matches_oracle(out.cpu(), ref[0], same[0], "out")
        assert_matches_oracle(lse.cpu(), ref[1], same[1].float(), "lse")


def test_given_buckets_and_long_stable_sort(dev):
    # two buckets over 2048 tokens: long runs of equal buckets, where only a stable sort keeps position order
    qk, v = inputs(1, 2048, 2, 64, dtype=torch.bfloat16)
    buckets = torch.randint(0, 2, (1, 2, 2, 2048))
    kw = dict(n_hashes=2, n_buckets=2, chunk_length=64, return_lse=True, return_buckets=True)
    out, lse, got = longattn.lsh_attention(qk.to(dev), v.to(dev), buckets=buckets.to(dev), **kw)
    assert torch.equal(got.cpu(), buckets)
    ref = reference.lsh_attention(qk, v, buckets, chunk_length=64)
    same = same_math(qk, v, buckets, chunk_length=64)
    assert_matches_oracle(out.cpu(), ref[0], same[0], "out")
    assert_matches_oracle(lse.cpu(), ref[1], same[1].float(), "lse")


def test_strided_inputs(dev):
    # (B, H, S, D) tensors seen as (B, S, H, D): strided rows, read in place
    qk = torch.randn(2, 2, 128, 64).to(torch.float16).transpose(1, 2)
    v = torch.randn(2, 2, 128, 64).to(torch.float16).transpose(1, 2)
    check(dev, qk, v, n_hashes=2, n_buckets=4, chunk_length=32)


def test_seed_draws_the_same_rotations_as_given(dev):
    qk, v = inputs(1, 128, 2, 32, dtype=torch.float16)
    rotations = longattn.lsh_rotations(2, 32, 2, 4, seed=7, device=dev)
    kw = dict(n_hashes=2, n_buckets=4, chunk_length=32)
    a = longattn.lsh_attention(qk.to(dev), v.to(dev), seed=7, **kw)
    b = longattn.lsh_attention(qk.to(dev), v.to(dev), rotations=rotations, **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_torch_compile_fullgraph(dev):
    torch._dynamo.reset()
    qk, v = (t.to(dev) for t in inputs(1, 128, 2, 64, dtype=torch.float16))
    f = lambda qk, v: longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=4, chunk_length=32, seed=3) * 2  # noqa
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(qk, v), f(qk, v), atol=0, rtol=0)


def test_unsupported_head_dims_are_refused_with_the_supported_list(dev):
    qk = torch.randn(1, 64, 2, 40).to(torch.float16).to(dev)
    with pytest.raises(ValueError, match=r"head_dim: got head_dim=40.*supported: head_dim == head_dim_v in"):
        longattn.lsh_attention(qk, qk, n_hashes=1, n_buckets=2, chunk_length=32)
    v = torch.randn(1, 64, 2, 32).to(torch.float16).to(dev)
    qk = torch.randn(1, 64, 2, 64).to(torch.float16).to(dev)
    with pytest.raises(ValueError, match=r"head_dim: got head_dim=64, head_dim_v=32"):
        longattn.lsh_attention(qk, v, n_hashes=1, n_buckets=2, chunk_length=32)
    # more buckets than the CUDA sort's counts hold (given buckets: nothing to draw)
    qk = torch.randn(1, 64, 1, 32).to(torch.float16).to(dev)
    buckets = torch.zeros(1, 1, 1, 64, dtype=torch.int64, device=dev)
    with pytest.raises(ValueError, match=r"n_buckets: got 2097152; lsh_attention on CUDA supports .*up to 2\^20 buckets"):
        longattn.lsh_attention(qk, qk, n_hashes=1, n_buckets=1 << 21, chunk_length=32, buckets=buckets)
    # float32 on CUDA cores: any head dim up to 256
    qk, v = inputs(1, 64, 1, 24, 40)
    check(dev, qk, v, n_hashes=2, n_buckets=4, chunk_length=16)


@emulator_only
@pytest.mark.parametrize("cc", [86, 89])
def test_head_dim_256_fits_an_sm86_block(cc):
    # 3 x 64 x 264 x 2 bytes of tiles is the sm86 / sm89 opt-in maximum: the rows' metadata must live in the padding
    qk, v = inputs(1, 128, 1, 256, dtype=torch.bfloat16)
    with testing.cuda_emulator(compute_capability=cc):
        check(torch.device("cpu"), qk, v, n_hashes=2, n_buckets=4, chunk_length=64)


@gpu_only
def test_cuda_graph_capture_and_replay():
    qk, v = (torch.randn(1, 1024, 4, 64, dtype=torch.float16, device="cuda") for _ in range(2))
    rot = longattn.lsh_rotations(4, 64, 4, 16, seed=1, device="cuda")
    f = lambda: longattn.lsh_attention(qk, v, n_hashes=4, n_buckets=16, chunk_length=64, rotations=rot)  # noqa
    want = f()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        f()  # warm-up on a side stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = f()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_rows_that_see_only_themselves_are_exact(dev):
    # causal token 0 sees only itself (score -1e5) in every round: its output is v[0]. Rounds combined from their
    # softmax maxima and sums stay exact; combining float32 per-round lse values near -1e5 (spacing 2^-7) would not.
    qk, v = inputs(2, 256, 2, 64)
    out, lse = longattn.lsh_attention(qk.to(dev), v.to(dev), n_hashes=4, n_buckets=8, chunk_length=32, causal=True,
                                      chunks_after=1, seed=5, return_lse=True)
    out, lse = out.cpu(), lse.cpu()
    torch.testing.assert_close(out[:, 0], v[:, 0], atol=1e-6, rtol=1e-6)
    assert (lse[:, :, 0] < -9e4).all()
