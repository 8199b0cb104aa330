"""longattn.lsh_attention against the float64 oracle, the hashing rule, seeds, and the error rules."""

import math

import pytest
import torch

import longattn
from longattn import reference

from helpers import assert_matches_oracle, p_rounding

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def inputs(B, S, H, D, Dv=None, dtype=torch.float32):
    return torch.randn(B, S, H, D).to(dtype), torch.randn(B, S, H, Dv or D).to(dtype)


def check_against_oracle(qk, v, *, n_hashes, n_buckets, chunk_length, chunks_before=1, chunks_after=0,
                         causal=False, key_padding_mask=None, seed=0):
    """Buckets from longattn's hashing are checked against argmax(xR; -xR) (up to float32 near-ties), then handed to
    the oracle, so the attention part is compared on identical buckets."""
    H, D = qk.shape[2], qk.shape[3]
    rotations = longattn.lsh_rotations(H, D, n_hashes, n_buckets, seed=seed)
    kw = dict(chunk_length=chunk_length, chunks_before=chunks_before, chunks_after=chunks_after, causal=causal,
              key_padding_mask=key_padding_mask)
    out, lse, buckets = longattn.lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=n_buckets, rotations=rotations,
                                               return_lse=True, return_buckets=True, **kw)
    assert out.dtype == qk.dtype and out.shape == v.shape and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == (qk.shape[0], H, qk.shape[1])
    assert buckets.dtype == torch.int64 and buckets.shape == (qk.shape[0], H, n_hashes, qk.shape[1])
    check_buckets_are_argmax(qk, rotations, buckets, key_padding_mask)
    ref_out, ref_lse = reference.lsh_attention(qk, v, buckets, **kw)
    # PyTorch doing the same math with the inputs rounded to their dtype (and, where bfloat16 runs bfloat16 tiles,
    # the probabilities rounded to bfloat16 before they multiply v)
    p_dtype = p_rounding(qk.dtype)
    pt_out, pt_lse = reference.lsh_attention(qk, v, buckets, compute_dtype=torch.float32, p_dtype=p_dtype, **kw)
    if qk.dtype != torch.float32:
        pt_out = pt_out.to(qk.dtype)
    assert_matches_oracle(out, ref_out, pt_out, "out")
    assert_matches_oracle(lse, ref_lse, pt_lse, "lse")
    return out, lse, buckets


def check_buckets_are_argmax(qk, rotations, buckets, key_padding_mask=None):
    """Each bucket is a maximal entry of concat(xR, -xR) (exact ties or float32 near-ties may pick another maximal
    entry; anything else is wrong), and padding tokens sit in the extra bucket n_buckets."""
    n_buckets = 2 * rotations.shape[-1]
    x = qk.double().transpose(1, 2)
    proj = torch.einsum("bhsd,hdrk->bhrsk", x, rotations.double())
    proj = torch.cat([proj, -proj], -1)                                 # (B, H, R, S, n_buckets)
    real = torch.ones_like(buckets, dtype=torch.bool) if key_padding_mask is None else \
        key_padding_mask[:, None, None, :].expand_as(buckets)
    assert (buckets[~real] == n_buckets).all()
    got = proj.gather(-1, buckets.clamp(max=n_buckets - 1)[..., None])[..., 0]
    best = proj.max(-1).values
    assert ((best - got)[real] <= 1e-4 * (1 + best.abs()[real])).all()
    exact = reference.lsh_hash(qk, rotations, key_padding_mask)
    assert (exact == buckets).float().mean() > 0.999   # ties are rare with random data


@pytest.mark.parametrize("n_hashes", [1, 2, 4, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_rounds_and_causal(cpu_isa, n_hashes, causal):
    qk, v = inputs(2, 256, 2, 32, 24)
    check_against_oracle(qk, v, n_hashes=n_hashes, n_buckets=8, chunk_length=32, causal=causal)


@pytest.mark.parametrize("before,after", [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (3, 3)])
def test_adjacent_chunks(before, after):
    # (3, 3) on 4 chunks per round wraps around and sees chunks twice: no deduplication, as in Reformer.
    qk, v = inputs(1, 128, 2, 16)
    check_against_oracle(qk, v, n_hashes=2, n_buckets=4, chunk_length=32, chunks_before=before, chunks_after=after)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask(causal):
    qk, v = inputs(2, 192, 2, 32)
    mask = torch.ones(2, 192, dtype=torch.bool)
    mask[0, 150:] = False
    mask[1, :20] = False
    mask[1, 90:95] = False
    check_against_oracle(qk, v, n_hashes=3, n_buckets=8, chunk_length=64, causal=causal, key_padding_mask=mask)


@pytest.mark.parametrize("S,chunk", [(1, 64), (40, 64), (64, 64), (100, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_sequence_within_one_chunk_is_plain_attention(S, chunk, causal):
    # S <= chunk_length: no hashing, one round over the whole sequence with the same masks.
    qk, v = inputs(2, S, 2, 16)
    out, lse = longattn.lsh_attention(qk, v, n_hashes=4, n_buckets=8, chunk_length=chunk, causal=causal,
                                      return_lse=True)
    ref_out, ref_lse = reference.lsh_attention(qk, v, None, chunk_length=chunk, causal=causal)
    pt_out, pt_lse = reference.lsh_attention(qk, v, None, chunk_length=chunk, causal=causal,
                                             compute_dtype=torch.float32)
    assert_matches_oracle(out, ref_out, pt_out, "out")
    assert_matches_oracle(lse, ref_lse, pt_lse, "lse")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_on_every_cpu_path(cpu_isa, dtype):
    # odd chunk length and head dims: bfloat16 tiles (avx512_bf16) pair an odd last key and dim with zeros
    qk, v = inputs(2, 198, 2, 33, 17, dtype=dtype)
    mask = torch.ones(2, 198, dtype=torch.bool)
    mask[1, 150:] = False
    check_against_oracle(qk, v, n_hashes=2, n_buckets=6, chunk_length=33, causal=True, key_padding_mask=mask)
    check_against_oracle(qk, v, n_hashes=3, n_buckets=4, chunk_length=66, chunks_after=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [1, 7, 64, 128, 256])
def test_dtypes_and_head_dims(dtype, head_dim):
    qk, v = inputs(1, 128, 2, head_dim, dtype=dtype)
    check_against_oracle(qk, v, n_hashes=2, n_buckets=4, chunk_length=32, causal=True)


def test_chunks_longer_than_a_tile_and_odd_sizes():
    qk, v = inputs(1, 480, 3, 20, 12)
    check_against_oracle(qk, v, n_hashes=2, n_buckets=6, chunk_length=160, chunks_before=1, chunks_after=1)


def test_given_buckets_are_used_as_is():
    qk, v = inputs(2, 128, 2, 16)
    buckets = torch.randint(0, 6, (2, 2, 3, 128))
    out, lse, used = longattn.lsh_attention(qk, v, n_hashes=3, n_buckets=6, chunk_length=16, buckets=buckets,
                                            return_lse=True, return_buckets=True)
    assert torch.equal(used, buckets)
    ref_out, ref_lse = reference.lsh_attention(qk, v, buckets, chunk_length=16)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=2e-6)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=2e-7, atol=2e-6)
    # int32 buckets and the padding bucket are accepted
    buckets[0, 0, 0, :5] = 6
    longattn.lsh_attention(qk, v, n_hashes=3, n_buckets=6, chunk_length=16, buckets=buckets.int())


def test_hashing_matches_argmax_on_every_cpu_path(cpu_isa):
    qk, _ = inputs(2, 300, 3, 24)
    rotations = torch.randn(3, 24, 4, 37)
    _, buckets = longattn.lsh_attention(qk, qk, n_hashes=4, n_buckets=74, chunk_length=30, rotations=rotations,
                                        return_buckets=True)
    check_buckets_are_argmax(qk, rotations, buckets)


@pytest.mark.parametrize("factors", [[2, 2], [4, 6], [8, 2, 10], [38, 36]])
def test_factorized_hashing_matches_the_oracle_on_every_cpu_path(cpu_isa, factors):
    """n_buckets=[f0, f1, ...]: per-factor argmax over its own rotation columns, combined b0 + f0 (b1 + f1 (...));
    padded tokens go to the bucket prod(f). Rotation counts that are not multiples of the micro-kernel's row block
    (37 columns for [38, 36]) test the edges."""
    qk, v = inputs(2, 240, 3, 24)
    columns = sum(f // 2 for f in factors)
    rotations = torch.randn(3, 24, 3, columns)
    valid = torch.ones(2, 240, dtype=torch.bool)
    valid[1, 200:] = False
    out, lse, buckets = longattn.lsh_attention(qk, v, n_hashes=3, n_buckets=factors, chunk_length=30,
                                               rotations=rotations, key_padding_mask=valid, return_lse=True,
                                               return_buckets=True)
    real = valid[:, None, None, :].expand_as(buckets)
    assert (buckets[~real] == math.prod(factors)).all()
    # each factor's digit of the bucket is a maximal entry of its own concat(xR, -xR) (float32 near-ties aside)
    proj = torch.einsum("bhsd,hdrk->bhrsk", qk.double().transpose(1, 2), rotations.double())
    rest, first = buckets.clamp(max=math.prod(factors) - 1), 0
    for f in factors:
        part = torch.cat([proj[..., first:first + f // 2], -proj[..., first:first + f // 2]], -1)
        got = part.gather(-1, (rest % f)[..., None])[..., 0]
        best = part.max(-1).values
        assert ((best - got)[real] <= 1e-4 * (1 + best.abs()[real])).all()
        rest, first = rest // f, first + f // 2
    exact = reference.lsh_hash(qk, rotations, valid, n_buckets=factors)
    assert (exact == buckets).float().mean() > 0.999   # ties are rare with random data
    ref_out, ref_lse = reference.lsh_attention(qk, v, buckets, chunk_length=30, key_padding_mask=valid)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=2e-6)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=2e-7, atol=2e-6)
    # seed= draws (H, D, n_hashes, columns) rotations, as lsh_rotations does with the same factors
    a = longattn.lsh_attention(qk, v, n_hashes=3, n_buckets=factors, chunk_length=30, seed=7)
    b = longattn.lsh_attention(qk, v, n_hashes=3, n_buckets=factors, chunk_length=30,
                               rotations=longattn.lsh_rotations(3, 24, 3, factors, seed=7))
    assert torch.equal(a, b)


def test_a_single_factor_is_the_int_case():
    qk, v = inputs(1, 128, 2, 16)
    kw = dict(n_hashes=2, chunk_length=32, seed=3, return_buckets=True)
    out_list, b_list = longattn.lsh_attention(qk, v, n_buckets=[8], **kw)
    out_int, b_int = longattn.lsh_attention(qk, v, n_buckets=8, **kw)
    assert torch.equal(out_list, out_int) and torch.equal(b_list, b_int)


def test_ties_pick_the_first_maximal_index():
    # x = e_0 and R with equal columns: every entry of xR ties, and max(xR) == max(-xR) when xR = 0.
    qk = torch.zeros(1, 64, 1, 4)
    qk[0, :32, 0, 0] = 1.0                                   # xR = (1, 1, 1) -> bucket 0
    rotations = torch.zeros(1, 4, 1, 3)
    rotations[0, 0, 0, :] = 1.0
    _, buckets = longattn.lsh_attention(qk, qk, n_hashes=1, n_buckets=6, chunk_length=32, rotations=rotations,
                                        return_buckets=True)
    assert (buckets[0, 0, 0, :32] == 0).all()               # first of three equal maxima
    assert (buckets[0, 0, 0, 32:] == 0).all()               # all six entries are 0: the very first wins
    assert torch.equal(buckets, reference.lsh_hash(qk, rotations))


def test_seed_is_deterministic_and_private():
    qk, v = inputs(1, 256, 2, 16)
    state = torch.get_rng_state()
    a, ba = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, seed=123, return_buckets=True)
    b, bb = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, seed=123, return_buckets=True)
    assert torch.equal(torch.get_rng_state(), state), "a seeded call must not touch the global RNG"
    assert torch.equal(a, b) and torch.equal(ba, bb)
    _, bc = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, seed=124, return_buckets=True)
    assert not torch.equal(ba, bc)
    # the seeded rotations are the ones Hugging Face draws after torch.manual_seed(seed)
    torch.manual_seed(123)
    hf_style = torch.randn(2, 16, 2, 4)
    assert torch.equal(longattn.lsh_rotations(2, 16, 2, 8, seed=123), hf_style)


def test_unseeded_calls_use_the_global_rng():
    qk, v = inputs(1, 128, 1, 16)
    torch.manual_seed(7)
    _, b1 = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, return_buckets=True)
    torch.manual_seed(7)
    _, b2 = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, return_buckets=True)
    assert torch.equal(b1, b2)


def test_return_order():
    qk, v = inputs(1, 64, 1, 8)
    kw = dict(n_hashes=1, n_buckets=4, chunk_length=32, seed=0)
    assert isinstance(longattn.lsh_attention(qk, v, **kw), torch.Tensor)
    out, lse = longattn.lsh_attention(qk, v, return_lse=True, **kw)
    assert lse.shape == (1, 1, 64)
    out2, buckets = longattn.lsh_attention(qk, v, return_buckets=True, **kw)
    assert buckets.shape == (1, 1, 1, 64) and torch.equal(out, out2)
    out3, lse3, buckets3 = longattn.lsh_attention(qk, v, return_lse=True, return_buckets=True, **kw)
    assert torch.equal(lse3, lse) and torch.equal(buckets3, buckets)


def test_strided_inputs():
    qk = torch.randn(1, 2, 128, 16).transpose(1, 2)           # a (B, H, S, D) model's tensor
    v = torch.randn(1, 128, 4, 32)[:, :, ::2, ::2]            # strided heads, non-unit last stride (copied)
    mask = torch.ones(1, 256, dtype=torch.bool)[:, ::2]
    check_against_oracle(qk, v, n_hashes=2, n_buckets=4, chunk_length=32, key_padding_mask=mask)


def test_bitwise_identical_across_thread_counts(cpu_isa):
    qk, v = inputs(2, 512, 4, 32)
    kw = dict(n_hashes=3, n_buckets=16, chunk_length=32, seed=5, causal=True, return_lse=True)
    longattn.set_num_threads(1)
    one = longattn.lsh_attention(qk, v, **kw)
    longattn.set_num_threads(3)
    three = longattn.lsh_attention(qk, v, **kw)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


def test_long_sequence_against_oracle():
    # Many chunks per item (rows reused between neighbouring chunks) and many rounds.
    qk, v = inputs(1, 4096, 1, 32)
    check_against_oracle(qk, v, n_hashes=4, n_buckets=64, chunk_length=64)


def test_empty_tensors():
    for B, S, H in [(0, 64, 2), (1, 0, 2), (1, 64, 0)]:
        qk, v = torch.randn(B, S, H, 8), torch.randn(B, S, H, 8)
        out, lse, buckets = longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=4, chunk_length=32, seed=0,
                                                   return_lse=True, return_buckets=True)
        assert out.shape == (B, S, H, 8) and lse.shape == (B, H, S) and buckets.shape == (B, H, 2, S)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    rotations = torch.randn(2, 16, 2, 4)

    def f(qk, v):
        return longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=8, chunk_length=32, rotations=rotations) * 2

    qk, v = inputs(1, 128, 2, 16)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(qk, v), f(qk, v), atol=0, rtol=0)

    def g(qk, v):  # factorized: the factors are schema ints
        return longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=[4, 4], chunk_length=32, rotations=rotations)

    torch.testing.assert_close(torch.compile(g, fullgraph=True)(qk, v), g(qk, v), atol=0, rtol=0)

    def seeded(qk, v):  # seed=: the rotations are drawn by an operator, no graph break, the same numbers
        return longattn.lsh_attention(qk, v, n_hashes=2, n_buckets=[4, 4], chunk_length=32, seed=2**64 - 5)

    torch.testing.assert_close(torch.compile(seeded, fullgraph=True)(qk, v), seeded(qk, v), atol=0, rtol=0)
    rot = torch.compile(lambda: longattn.lsh_rotations(2, 16, 2, 8, seed=11), fullgraph=True)()
    assert torch.equal(rot, torch.randn(2, 16, 2, 4, generator=torch.Generator().manual_seed(11)))


def test_custom_op_passes_opcheck():
    qk, v = inputs(1, 64, 2, 16)
    rotations = torch.randn(2, 16, 2, 2)
    mask = torch.ones(1, 64, dtype=torch.bool)
    torch.library.opcheck(torch.ops.longattn.lsh_attention_fwd.default,
                          (qk, v, 2, 4, 16, 1, 0, True, rotations, None, mask, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    torch.library.opcheck(torch.ops.longattn.lsh_attention_fwd.default,
                          (qk, v, 2, 8, 16, 1, 0, False, torch.randn(2, 16, 2, 3), None, None, True, [2, 4]),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_autograd_is_refused_not_ignored():
    qk = torch.randn(1, 64, 1, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward"):
        longattn.lsh_attention(qk, qk, n_hashes=1, n_buckets=4, chunk_length=32, seed=0)


QK = torch.randn(2, 64, 2, 8)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(n_buckets=5), ValueError, r"n_buckets: got 5; expected an even number"),
    (dict(n_buckets=0), ValueError, r"n_buckets: got 0; expected an int 2\.\."),
    (dict(n_buckets=4.0), TypeError, r"n_buckets: got 4.0 \(float\); expected an even int, or a list of even ints"),
    (dict(n_buckets=[4, 3]), ValueError, r"n_buckets\[1\]: got 3; expected an even int >= 2"),
    (dict(n_buckets=[4, 0]), ValueError, r"n_buckets\[1\]: got 0; expected an even int >= 2"),
    (dict(n_buckets=[4, "2"]), TypeError, r"n_buckets\[1\]: got '2' \(str\); expected an int"),
    (dict(n_buckets=[]), ValueError, r"n_buckets: got 0 factors \[\]; expected an even int, or 1 to 16 even"),
    (dict(n_buckets=[4096, 8192]), ValueError, r"n_buckets: the factors \[4096, 8192\] make more than 2\^24"),
    (dict(n_buckets=[2, 4], rotations=torch.randn(2, 8, 2, 4)), ValueError,
     r"rotations: got shape \(2, 8, 2, 4\); expected .* = \(2, 8, 2, 3\)"),
    (dict(n_buckets=[2, 4], buckets=torch.full((2, 2, 2, 64), 9)), ValueError,
     r"buckets: values range over 9\.\.9; expected 0\.\.7"),
    (dict(n_hashes=0), ValueError, r"n_hashes: got 0; expected an int 1\.\.64"),
    (dict(chunk_length=0), ValueError, r"chunk_length: got 0; expected an int >= 1"),
    (dict(chunk_length=48), ValueError, r"seq: got S = 64, not a multiple of chunk_length = 48; pad qk and v to "
                                        r"S = 96 and pass key_padding_mask"),
    (dict(chunks_before=-1), ValueError, r"chunks_before: got -1"),
    (dict(chunks_after=True), TypeError, r"chunks_after: expected an int"),
    (dict(causal=None), TypeError, r"causal: expected a bool"),
    (dict(seed=1.5), TypeError, r"seed: expected None or an int"),
    (dict(rotations=torch.randn(2, 8, 2, 3)), ValueError,
     r"rotations: got shape \(2, 8, 2, 3\); expected \(heads, head_dim, n_hashes, n_buckets // 2, or the sum of each "
     r"bucket factor // 2\) = \(2, 8, 2, 2\)"),
    (dict(rotations=torch.ones(2, 8, 2, 2, dtype=torch.int64)), ValueError, r"rotations: dtype torch.int64"),
    (dict(rotations=torch.randn(2, 8, 2, 2), seed=1), ValueError, r"rotations, seed: both given"),
    (dict(buckets=torch.zeros(2, 2, 2, 63, dtype=torch.int64)), ValueError,
     r"buckets: got shape \(2, 2, 2, 63\); expected \(batch, heads, n_hashes, seq\) = \(2, 2, 2, 64\)"),
    (dict(buckets=torch.full((2, 2, 2, 64), 5)), ValueError, r"buckets: values range over 5\.\.5; expected 0\.\.3"),
    (dict(buckets=torch.full((2, 2, 2, 64), -1)), ValueError, r"buckets: values range over -1\.\.-1"),
    (dict(buckets=torch.zeros(2, 2, 2, 64)), ValueError, r"buckets: dtype torch.float32; expected an integer"),
    (dict(buckets=torch.zeros(2, 2, 2, 64, dtype=torch.int64), seed=0), ValueError, r"buckets: given together"),
    (dict(key_padding_mask=torch.ones(2, 64)), ValueError, r"key_padding_mask: dtype torch.float32; expected "
                                                           r"torch.bool"),
    (dict(key_padding_mask=torch.ones(2, 65, dtype=torch.bool)), ValueError,
     r"key_padding_mask: got shape \(2, 65\); expected \(batch, seq\) = \(2, 64\)"),
    (dict(return_buckets=1), TypeError, r"return_buckets: expected a bool"),
])
def test_bad_options(kwargs, exc, pattern):
    base = dict(n_hashes=2, n_buckets=4, chunk_length=32)
    base.update(kwargs)
    with pytest.raises(exc, match=pattern):
        longattn.lsh_attention(QK, QK, **base)


def test_bad_tensors():
    with pytest.raises(ValueError, match=r"qk, v: expected the same \(batch, seq, heads\)"):
        longattn.lsh_attention(QK, torch.randn(2, 64, 1, 8), n_hashes=1, n_buckets=4, chunk_length=32)
    with pytest.raises(ValueError, match=r"qk, v: expected one dtype"):
        longattn.lsh_attention(QK, QK.half(), n_hashes=1, n_buckets=4, chunk_length=32)
    with pytest.raises(ValueError, match=r"qk: expected a 4-D tensor"):
        longattn.lsh_attention(QK[0], QK[0], n_hashes=1, n_buckets=4, chunk_length=32)
    with pytest.raises(TypeError, match=r"qk: expected a torch.Tensor"):
        longattn.lsh_attention([1], QK, n_hashes=1, n_buckets=4, chunk_length=32)
    with pytest.raises(ValueError, match=r"head_dim: got 300; the CPU backend supports head dims 1..256"):
        x = torch.randn(1, 64, 1, 300)
        longattn.lsh_attention(x, x, n_hashes=1, n_buckets=4, chunk_length=32)
