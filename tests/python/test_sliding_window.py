"""longattn.sliding_window_attention against the float64 oracle, the identities, and the error rules."""

import pytest
import torch

import longattn
from longattn import reference

from helpers import assert_matches_oracle, bshd

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_against_oracle(q, k, v, **kw):
    out, lse = longattn.sliding_window_attention(q, k, v, return_lse=True, **kw)
    ref_out, ref_lse = reference.sliding_window_attention(q, k, v, **kw)
    pt_out, pt_lse = reference.sliding_window_attention(q, k, v, compute_dtype=q.dtype, **kw)
    assert out.dtype == q.dtype and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert_matches_oracle(out, ref_out, pt_out, "out")
    assert_matches_oracle(lse, ref_lse, pt_lse.float(), "lse")
    return out, lse


def global_mask(batch, seqlen, positions_per_batch):
    g = torch.zeros(batch, seqlen, dtype=torch.bool)
    for b, positions in enumerate(positions_per_batch):
        g[b, positions] = True
    return g


# Windows smaller and larger than a 64-key tile and than the sequence, asymmetric, one-sided, unbounded sides.
WINDOWS = [(0, 0), (1, 1), (3, 0), (0, 5), (16, 16), (63, 64), (100, 7), (7, 100), (256, 256), (-1, 9), (9, -1),
           (-1, -1), (5000, 5000)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("sq,sk", [(300, 300), (1, 1), (130, 400), (400, 130), (64, 65)])
def test_windows_against_oracle(cpu_isa, window, sq, sk):
    q, k, v = bshd(1, sq, 4, 32), bshd(1, sk, 2, 32), bshd(1, sk, 2, 24)
    check_against_oracle(q, k, v, window=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", [(20, 11), (0, 0), (63, 0), (100, 7)])
def test_16_bit_windows_dilation_and_global_tokens_on_every_cpu_path(cpu_isa, dtype, window):
    # bfloat16 tiles (avx512_bf16) pair keys and head dims: odd dims, band edges at odd keys, residue classes and
    # global keys all start tiles at odd offsets somewhere here
    q, k, v = bshd(2, 301, 4, 33, dtype), bshd(2, 301, 2, 33, dtype), bshd(2, 301, 2, 17, dtype)
    check_against_oracle(q, k, v, window=window)
    check_against_oracle(q, k, v, window=(window[0], 0), causal=True, dilation=[1, 2, 3, 5])
    q, k, v = (bshd(2, 257, 2, 65, dtype) for _ in range(3))
    check_against_oracle(q, k, v, window=window, global_tokens=global_mask(2, 257, [[0, 3, 130], [256]]))
    q, k, v = bshd(1, 400, 6, 64, dtype), bshd(1, 400, 2, 64, dtype), bshd(1, 400, 2, 64, dtype)
    check_against_oracle(q, k, v, window=window)  # 3 query heads per kv head packed: tiles start at odd keys


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [1, 7, 64, 80, 128, 256])
def test_dtypes_and_head_dims(dtype, head_dim):
    q, k, v = (bshd(2, 200, 2, head_dim, dtype) for _ in range(3))
    check_against_oracle(q, k, v, window=(20, 11))
    check_against_oracle(q, k, v, window=(30, 0), causal=True, dilation=[1, 3])


@pytest.mark.parametrize("window", [(40, 0), (13, 0), (-1, 0), (0, 0)])
@pytest.mark.parametrize("sq,sk", [(300, 300), (100, 350), (350, 100)])
def test_causal(cpu_isa, window, sq, sk):
    q, k, v = bshd(1, sq, 2, 32), bshd(1, sk, 1, 32), bshd(1, sk, 1, 32)
    out_causal = check_against_oracle(q, k, v, window=window, causal=True)
    # causal=True is exactly right = 0 (and right = -1 with causal is right = 0)
    out_right0 = longattn.sliding_window_attention(q, k, v, window=(window[0], 0), return_lse=True)
    out_unbounded = longattn.sliding_window_attention(q, k, v, window=(window[0], -1), causal=True, return_lse=True)
    for a, b in zip(out_causal, out_right0):
        assert torch.equal(a, b)
    for a, b in zip(out_causal, out_unbounded):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dilation", [2, 3, 7, [1, 2, 3, 4], [5, 1, 1, 2], 1000])
@pytest.mark.parametrize("window,causal", [((4, 4), False), ((10, 2), False), ((-1, 3), False), ((6, 0), True)])
@pytest.mark.parametrize("sq,sk", [(257, 257), (150, 260), (260, 150)])
def test_dilation(cpu_isa, dilation, window, causal, sq, sk):
    q, k, v = bshd(1, sq, 4, 16), bshd(1, sk, 2, 16), bshd(1, sk, 2, 16)
    check_against_oracle(q, k, v, window=window, causal=causal, dilation=dilation)


def test_dilation_one_per_head_equals_separate_calls():
    q, k, v = bshd(1, 200, 2, 32), bshd(1, 200, 2, 32), bshd(1, 200, 2, 32)
    both = longattn.sliding_window_attention(q, k, v, window=(5, 5), dilation=[2, 3])
    for h, d in enumerate((2, 3)):
        one = longattn.sliding_window_attention(q, k, v, window=(5, 5), dilation=d)
        assert torch.equal(both[:, :, h], one[:, :, h])


@pytest.mark.parametrize("positions", [[[0]], [[299]], [[0, 299]], [[150]], [[0, 1, 2, 100, 101, 298, 299]],
                                       [list(range(0, 300, 3))], [list(range(300))], [[]]])
@pytest.mark.parametrize("window,causal,dilation", [((8, 8), False, 1), ((20, 0), True, 1), ((3, 3), False, [1, 4]),
                                                    ((-1, -1), False, 1), ((0, 0), False, 1)])
def test_global_tokens(cpu_isa, positions, window, causal, dilation):
    q, k, v = bshd(1, 300, 2, 32), bshd(1, 300, 1, 32), bshd(1, 300, 1, 32)
    check_against_oracle(q, k, v, window=window, causal=causal, dilation=dilation,
                         global_tokens=global_mask(1, 300, positions))


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_tokens_differ_per_batch(dtype):
    q, k, v = (bshd(3, 520, 4, 64, dtype) for _ in range(3))
    g = global_mask(3, 520, [[0, 519], [], list(range(200, 330))])
    check_against_oracle(q, k, v, window=(64, 64), global_tokens=g)


def test_global_query_rows_see_every_key_and_global_keys_count_once():
    # A global query's row is full attention; a local query sees its window plus the global keys, each once.
    q, k, v = bshd(1, 100, 1, 16), bshd(1, 100, 1, 16), bshd(1, 100, 1, 16)
    g = global_mask(1, 100, [[10, 50]])
    out = longattn.sliding_window_attention(q, k, v, window=(2, 2), global_tokens=g)
    dense = longattn.attention(q, k, v)
    torch.testing.assert_close(out[:, [10, 50]], dense[:, [10, 50]], rtol=0, atol=1e-6)
    visible = torch.zeros(100, dtype=torch.bool)
    visible[[9, 10, 11, 12, 13, 50]] = True  # query 11: window 9..13 holds global 10 already; 50 added once
    ref, _ = reference.masked_attention(q, k, v, visible[None, None, None, :])
    torch.testing.assert_close(out[:, 11].double(), ref[:, 11], rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(300, 300), (100, 333), (333, 100)])
def test_unbounded_window_is_attention(causal, sq, sk):
    q, k, v = bshd(2, sq, 4, 64), bshd(2, sk, 2, 64), bshd(2, sk, 2, 64)
    window = (-1, 0) if causal else (-1, -1)
    got = longattn.sliding_window_attention(q, k, v, window=window, return_lse=True)
    want = longattn.attention(q, k, v, causal=causal, return_lse=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_window_wider_than_the_sequence_is_attention():
    # Same keys, but the band's tile grid starts at its left edge, so the sum may run in another order: equal up
    # to float32 rounding, not bit for bit (the unbounded windows above are bit for bit).
    q, k, v = (bshd(1, 200, 2, 32) for _ in range(3))
    got = longattn.sliding_window_attention(q, k, v, window=(199, 199))
    torch.testing.assert_close(got, longattn.attention(q, k, v), rtol=0, atol=2e-6)


def test_against_sdpa_with_a_band_mask():
    q, k, v = (bshd(2, 333, 4, 64) for _ in range(3))
    i = torch.arange(333)
    band = (i[None, :] - i[:, None] >= -30) & (i[None, :] - i[:, None] <= 12)  # key j in [i - 30, i + 12]
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=band).transpose(1, 2)
    got = longattn.sliding_window_attention(q, k, v, window=(30, 12))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_strided_views_and_non_unit_last_stride():
    q = torch.randn(2, 4, 180, 32).transpose(1, 2)           # (B, S, H, D) view of (B, H, S, D)
    k = torch.randn(2, 180, 4, 64)[..., ::2]                  # last stride 2: copied once
    v = torch.randn(2, 180, 8, 32)[:, :, 1::2]                # every other head
    g = torch.zeros(2, 360, dtype=torch.bool)[:, ::2]         # strided mask
    g[0, 17] = True
    check_against_oracle(q, k, v, window=(9, 9), dilation=2, global_tokens=g)


def test_empty_rows_give_zero_and_minus_inf():
    # Sq > Sk: the first queries sit before key 0; with window (2, 0) the first Sq - Sk - ... see no key.
    q, k, v = bshd(1, 50, 2, 16), bshd(1, 10, 2, 16), bshd(1, 10, 2, 16)
    out, lse = check_against_oracle(q, k, v, window=(2, 0))
    assert (out[:, :40] == 0).all() and torch.isneginf(lse[:, :, :40]).all()
    # dilation leaves a query without any key of its residue class in reach
    out, lse = check_against_oracle(q, k, v, window=(1, 1), dilation=50)
    assert not torch.isnan(out).any()


def test_empty_tensors():
    for shape_q, shape_k in [((0, 5, 2, 8), (0, 5, 2, 8)), ((1, 0, 2, 8), (1, 5, 2, 8)), ((1, 5, 2, 8), (1, 0, 2, 8))]:
        q, k = torch.randn(shape_q), torch.randn(shape_k)
        out, lse = longattn.sliding_window_attention(q, k, k, window=(1, 1), return_lse=True)
        assert out.shape == shape_q and lse.shape == (shape_q[0], 2, shape_q[1])
        assert (out == 0).all() and torch.isneginf(lse).all()
    g = torch.zeros(1, 0, dtype=torch.bool)
    q = torch.randn(1, 0, 2, 8)
    assert longattn.sliding_window_attention(q, q, q, window=(1, 1), global_tokens=g).shape == (1, 0, 2, 8)


def test_bitwise_identical_across_thread_counts(cpu_isa):
    q, k, v = (bshd(2, 700, 4, 64) for _ in range(3))
    g = global_mask(2, 700, [[3, 400], [699]])
    kw = dict(window=(70, 30), dilation=[1, 2, 3, 1], global_tokens=g, return_lse=True)
    longattn.set_num_threads(1)
    one = longattn.sliding_window_attention(q, k, v, **kw)
    longattn.set_num_threads(3)
    three = longattn.sliding_window_attention(q, k, v, **kw)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    g = global_mask(1, 200, [[0, 100]])

    def f(q, k, v, g):
        return longattn.sliding_window_attention(q, k, v, window=(16, 16), dilation=[1, 2], global_tokens=g) + 1.0

    q, k, v = (bshd(1, 200, 2, 32) for _ in range(3))
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, g), f(q, k, v, g), atol=0, rtol=0)


def test_custom_op_passes_opcheck():
    q, k, v = (bshd(1, 90, 2, 16) for _ in range(3))
    g = global_mask(1, 90, [[5]])
    torch.library.opcheck(torch.ops.longattn.attention_fwd.default, (q, k, v, 0.25, False, 7, 3, [1, 2], g, True, 0.0, None, None),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_autograd_is_refused_not_ignored():
    q = torch.randn(1, 10, 1, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward"):
        longattn.sliding_window_attention(q, q, q, window=(1, 1))
    with torch.no_grad():
        longattn.sliding_window_attention(q, q, q, window=(1, 1))


Q = torch.randn(2, 16, 4, 8)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(window=4), ValueError, r"window: got the single number 4; expected a \(left, right\) pair"),
    (dict(window=(4,)), ValueError, r"window: got \(4,\); expected a \(left, right\) pair"),
    (dict(window=(1, 2, 3)), ValueError, r"window: got \(1, 2, 3\)"),
    (dict(window="4"), ValueError, r"window: got '4'"),
    (dict(window=(1.5, 2)), TypeError, r"window: the left bound is 1.5 \(float\); expected an int"),
    (dict(window=(1, True)), TypeError, r"window: the right bound is True"),
    (dict(window=(-2, 3)), ValueError, r"window: the left bound is -2; expected an int from 0 to 2\^31 - 1"),
    (dict(window=(3, -5)), ValueError, r"window: the right bound is -5"),
    (dict(window=(3, 2), causal=True), ValueError, r"window: got right = 2 with causal=True; causal means right = 0"),
    (dict(window=(3, 2), causal=1), TypeError, r"causal: expected a bool"),
    (dict(window=(3, 2), dilation=0), ValueError, r"dilation: got 0; expected an int from 1 to 2\^31 - 1"),
    (dict(window=(3, 2), dilation=-2), ValueError, r"dilation: got -2"),
    (dict(window=(3, 2), dilation=[1, 2]), ValueError, r"dilation: got 2 values \[1, 2\]; expected one per query "
                                                        r"head \(4\)"),
    (dict(window=(3, 2), dilation=[1, 0, 1, 1]), ValueError, r"dilation: got 0 for query head 1"),
    (dict(window=(3, 2), dilation=[1, 2.0, 1, 1]), TypeError, r"dilation: the value for query head 1 is 2.0"),
    (dict(window=(3, 2), dilation=2.0), TypeError, r"dilation: got 2.0 \(float\)"),
    (dict(window=(3, 2), dilation=True), TypeError, r"dilation: got True"),
    (dict(window=(3, 2), global_tokens=torch.zeros(2, 16)), ValueError,
     r"global_tokens: dtype torch.float32; expected torch.bool"),
    (dict(window=(3, 2), global_tokens=torch.zeros(2, 15, dtype=torch.bool)), ValueError,
     r"global_tokens: got shape \(2, 15\); expected \(batch, seq\) = \(2, 16\)"),
    (dict(window=(3, 2), global_tokens=torch.zeros(16, dtype=torch.bool)), ValueError,
     r"global_tokens: got shape \(16\)"),
    (dict(window=(3, 2), global_tokens=[0, 1]), TypeError, r"global_tokens: expected a torch.Tensor"),
    (dict(window=(3, 2), scale=float("nan")), ValueError, r"scale: got nan"),
    (dict(window=(3, 2), return_lse=None), TypeError, r"return_lse: expected a bool"),
])
def test_bad_options(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        longattn.sliding_window_attention(Q, Q, Q, **kwargs)


def test_window_is_required():
    with pytest.raises(TypeError, match="window"):
        longattn.sliding_window_attention(Q, Q, Q)


def test_global_tokens_need_self_attention():
    k = torch.randn(2, 20, 4, 8)
    with pytest.raises(ValueError, match=r"global_tokens: given with Sq = 16 != Sk = 20; .* self-attention only"):
        longattn.sliding_window_attention(Q, k, k, window=(1, 1), global_tokens=torch.zeros(2, 20, dtype=torch.bool))


def test_bad_tensors_are_checked_as_for_attention():
    with pytest.raises(ValueError, match=r"q, k, v: expected one dtype"):
        longattn.sliding_window_attention(Q, Q.half(), Q, window=(1, 1))
    with pytest.raises(ValueError, match=r"heads: q has 4 heads and k, v have 3"):
        k = torch.randn(2, 16, 3, 8)
        longattn.sliding_window_attention(Q, k, k, window=(1, 1))


@pytest.mark.parametrize("dilation", [1, 3])
def test_long_sequence_chained_items(dilation):
    # Long enough that one work item chains many query groups and reuses cached key tiles; checked against the
    # oracle on slices (the whole S x S mask would not fit a test), and bit for bit across thread counts (which
    # changes how items are chained).
    S, left, right = 16384, 100, 27
    q, k, v = (bshd(1, S, 2, 32) for _ in range(3))
    longattn.set_num_threads(1)
    out = longattn.sliding_window_attention(q, k, v, window=(left, right), dilation=dilation)
    longattn.set_num_threads(2)
    assert torch.equal(out, longattn.sliding_window_attention(q, k, v, window=(left, right), dilation=dilation))
    for a in (0, 5000, S - 700):
        b = a + 700
        j0, j1 = max(0, a - left * dilation), min(S, b + right * dilation)
        i, j = torch.arange(a, b)[:, None], torch.arange(j0, j1)[None, :]
        visible = (j >= i - left * dilation) & (j <= i + right * dilation) & ((j - i) % dilation == 0)
        ref, _ = reference.masked_attention(q[:, a:b], k[:, j0:j1], v[:, j0:j1], visible)
        torch.testing.assert_close(out[:, a:b].double(), ref, rtol=0, atol=2e-6)
