"""longattn reproduces Hugging Face Reformer's `LSHSelfAttention` (docs/semantics.md), checked against the real module.

What the HF layer computes (transformers/models/reformer/modeling_reformer.py, read for transformers 5.x; the
convention test at the end pins it against what `ReformerModel` really passes, so a change upstream fails loudly):

- Projections: qk = query_key(h), v = value(h), both bias-free Linear(E, H*D), split as x.view(B, S, H, D)
  .transpose(1, 2) -- so `query_key(h).view(B, S, H, D)` is exactly longattn's BSHD qk (and Dv = D: HF has one
  head size for both).
- Causal: `config.is_decoder=True` adds the mask "query position >= key position" (original positions, i.e.
  before the bucket sort). Nothing else reads is_decoder in this layer.
- Padding: `attention_mask` (B, S), 1 = real token, 0 = padding, read as `.to(bool)` -- longattn's key_padding_mask
  is that mask as bool. It only masks *keys* (score -> -1e9); padded *queries* still get an output (not zeroed).
  If any token of the batch is padding (`attention_mask.sum() < B*S`), every padded token goes to an extra bucket
  `num_buckets` and the per-round offset becomes num_buckets + 1 -- LSH step 2. An all-ones mask changes nothing.
- Hashing: `torch.manual_seed(hash_seed); torch.randn((H, D, n_hashes, n_buckets // 2))` on the *global* RNG
  (hash_seed=None: whatever state the global RNG is in), dtype = the activations' dtype (float32 here), then
  argmax(cat(x R, -x R)). Same numbers as longattn's seed= (a private torch.Generator seeded alike) -- verified below.
- Sorting: `_stable_argsort` of the flattened (n_hashes*S) offset buckets r*nb + bucket: order (round, bucket,
  position), LSH step 3. Chunks wrap cyclically over all n_hashes*S/chunk_length chunks (`_look_adjacent`).
- Scores: keys = qk * rsqrt(mean(qk**2) + 1e-6) / sqrt(D), queries raw; masked scores *replaced* by -1e9, then the
  self score (same original position) replaced by -1e5 -- LSH step 5-6. Rounds combined by their logsumexps.
- S <= chunk_length: `do_standard_self_attention`, no hashing (num_hashes ignored, buckets output None), one dense
  masked softmax over the sequence -- LSH step 9.
- Returns `LSHSelfAttentionOutput(hidden_states, attention_probs, buckets)`: hidden_states (B, S, H*D) = heads
  concatenated, *before* ReformerSelfOutput's dense; buckets (B, H, n_hashes, S) int64 *with the round offsets
  added* (r * num_buckets, or r * (num_buckets + 1) when the batch has padding), None on the S <= chunk path.
  longattn's return_buckets has no offsets (the same format as its buckets= argument); hf_buckets() removes
  them.

Tolerances (fp32 throughout; the float64 oracle longattn.reference.lsh_attention, fed the same buckets, is the
truth):
- Rows whose only unmasked key is the token itself ("self-only" rows: causal token 0, a padded query whose whole
  window is padding, ...): every score is -1e5 (a copy of the token itself; a round can see several copies, from
  other rounds' items in adjacent chunks) or -1e9, and the exact output is v at that position. Each round's lse,
  -1e5 + log(copies), is rounded to float32, whose spacing near 1e5 is 2^-7 (error <= 2^-8); the round's softmax
  exp(s - lse_r) then sums to 1 +- 2^-8, and the round weights exp(lse_r - lse) to 1 +- 2^-8 again (the combined
  lse is rounded too). So HF -- and any float32 implementation that forms these lse values -- is off by up to
  2^-7 ~ 0.8% of |v| on these rows (HF measured: up to 5.1e-3 with 4 rounds and (1, 1) chunks). On these rows
  longattn and HF must each be within 2^-7 of the truth and within 2^-6 of each other, relative to the row's max |v|
  (plus the fp32 floor). They are identified with the oracle: its lse is -1e5 + log(copies of self seen) there and
  O(10) anywhere a real key is visible, so lse < -5e4 separates them cleanly.
- All other rows: longattn within 2x HF's own error against the oracle plus 2e-6 x output scale
  (helpers.assert_matches_oracle, the project's criterion), and longattn vs HF within 2e-5 x max|output|: at most
  (chunks_before + 1 + chunks_after) * chunk_length <= 96 fp32 terms per row and <= 4 rounds, each a few float32 ulps
  (1.2e-7) from exact; HF's own error measures ~1e-6 x max|output| on these cases. A wrong chunk neighbourhood, a
  lost -1e9/-1e5 replacement or a wrong round weight moves the output by ~max|output| with these score magnitudes
  (weights re-initialised so scores have std ~3: a peaked softmax).
- lse (not returned by HF): against the oracle, 1e-5 x (1 + max|lse|) on ordinary rows (measured ~2e-7); on
  self-only rows 2^-7: the rounded per-round lse values (<= 2^-8 off) move their logsumexp by <= 2^-8, and the
  result is rounded once more.
"""

import math

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import ReformerConfig  # noqa: E402
from transformers.models.reformer.modeling_reformer import LSHSelfAttention, ReformerModel  # noqa: E402

import longattn  # noqa: E402
from longattn import reference, testing  # noqa: E402

from helpers import ABS_FLOOR, assert_matches_oracle  # noqa: E402

HIDDEN_STD = 3.0          # with weights ~ N(0, 1/E): qk entries std ~3, so scores q.k_hat have std ~3 (peaked)
AGREE_RTOL = 2e-5         # longattn vs HF on ordinary rows, relative to max|output| (module docstring)
SELF_ONLY_LSE = -5e4      # oracle lse below this: the row sees only itself (its lse is -1e5 + log(copies))
SELF_ONLY_RTOL = 2.0 ** -7 * 1.01  # self-only rows vs the exact v, relative to the row's max|v| (module docstring)
LSE_RTOL = 1e-5
HASH_SEED = 1234


def make_config(heads, head_dim, n_hashes, n_buckets, chunk, before=1, after=0, causal=False,
                hash_seed=HASH_SEED, **extra):
    return ReformerConfig(attention_head_size=head_dim, num_attention_heads=heads, hidden_size=heads * head_dim,
                          num_hashes=n_hashes, num_buckets=n_buckets, lsh_attn_chunk_length=chunk,
                          lsh_num_chunks_before=before, lsh_num_chunks_after=after, is_decoder=causal,
                          hash_seed=hash_seed, lsh_attention_probs_dropout_prob=0.0, attn_layers=["lsh"], **extra)


def reinit(linears, hidden_size, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in linears:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(hidden_size))


def make_layer(config, seed=0):
    layer = LSHSelfAttention(config).eval()
    reinit([layer.query_key, layer.value], config.hidden_size, seed)
    return layer


def factors_of(n_buckets):
    """HF's num_buckets (an int or a list of factors) as a list of factors."""
    return [n_buckets] if isinstance(n_buckets, int) else list(n_buckets)


def seed_rotations(heads, head_dim, n_hashes, n_buckets, seed):
    """What HF's torch.manual_seed(seed); torch.randn(shape) draws, from a private generator (LSH step 1): its
    rotation size is the sum of the factors, so the last dim is the sum of each factor // 2."""
    columns = sum(f // 2 for f in factors_of(n_buckets))
    return torch.randn((heads, head_dim, n_hashes, columns), generator=torch.Generator().manual_seed(seed))


def hf_buckets(buckets, n_buckets, batch_has_padding):
    """HF's returned buckets minus its round offsets r * (n_buckets [+ 1 when any token of the batch is padding]),
    n_buckets the product of the factors."""
    per_round = math.prod(factors_of(n_buckets)) + (1 if batch_has_padding else 0)
    return buckets - per_round * torch.arange(buckets.shape[2]).view(1, 1, -1, 1)


def assert_no_near_ties(qk, rotations, n_buckets=None):
    """Precondition for comparing buckets exactly: no token's top two hash scores (within each bucket factor's
    columns) are within float32 reach of each other (else fp32 HF and fp32 longattn may legitimately pick different
    buckets). A D-term float32 dot product is within D * 2^-24 * |x| |r| of exact whatever the summation order, so
    two of them cannot swap unless their exact gap is below twice that. Fixed seeds: deterministic."""
    rel = 2 * qk.shape[-1] * 2.0 ** -24
    x = qk.double().transpose(1, 2)
    r = rotations.double()
    rotated = torch.einsum("bhsd,hdrk->bhrsk", x, r)
    scale = x.norm(dim=-1)[:, :, None, :] * r.norm(dim=1).amax(-1)[None, :, :, None]
    first = 0
    for f in factors_of(n_buckets) if n_buckets is not None else [2 * rotations.shape[-1]]:
        part = rotated[..., first:first + f // 2]
        first += f // 2
        top2 = torch.cat([part, -part], -1).topk(2, dim=-1).values
        margin = ((top2[..., 0] - top2[..., 1]) / scale).min().item()
        assert margin > rel, f"test data has a near-tie in the hash (relative margin {margin:.2g}): change the seed"


def run_hf(layer, hidden, attention_mask):
    out = layer(hidden, attention_mask=attention_mask)
    B, S, _ = hidden.shape
    return out.hidden_states.view(B, S, layer.num_attention_heads, layer.attention_head_size), out.buckets


def project(layer, hidden):
    B, S, _ = hidden.shape
    H, D = layer.num_attention_heads, layer.attention_head_size
    return layer.query_key(hidden).view(B, S, H, D), layer.value(hidden).view(B, S, H, D)


def compare(ours, ours_lse, hf, ref64, lse64, v, what):
    """ours, hf, ref64: (B, S, H, Dv); lse64 (B, H, S); v (B, S, H, Dv). Separate tolerances for self-only rows."""
    self_only = (lse64 < SELF_ONLY_LSE).transpose(1, 2)                     # (B, S, H)
    normal = ~self_only
    scale = max(1.0, hf.abs().max().item())
    if normal.any():
        diff = (ours - hf)[normal].abs().max().item()
        assert diff <= AGREE_RTOL * scale, f"{what}: longattn vs HF {diff:.3g} > {AGREE_RTOL * scale:.3g}"
        assert_matches_oracle(ours[normal], ref64[normal], hf[normal], f"{what} (ordinary rows)")
    if self_only.any():
        v_rows = v[self_only].double()
        # the oracle agrees these rows are "v itself": the classification is right
        assert torch.allclose(ref64[self_only], v_rows, rtol=0, atol=1e-9 * scale)
        row_v = v_rows.abs().amax(-1, keepdim=True)
        floor = ABS_FLOOR[torch.float32] * scale
        err_hf = (ours[self_only].double() - hf[self_only].double()).abs()
        err_ours = (ours[self_only].double() - v_rows).abs()
        err_theirs = (hf[self_only].double() - v_rows).abs()
        # the premise of this tolerance: HF itself is within 2^-7 of the exact v on these rows
        assert torch.all(err_theirs <= SELF_ONLY_RTOL * row_v + floor), \
            f"{what}: HF off by {(err_theirs / row_v).max().item():.3g} x |v| on self-only rows (> 2^-7)?"
        assert torch.all(err_ours <= SELF_ONLY_RTOL * row_v + floor), \
            f"{what}: self-only rows, longattn vs exact {(err_ours / row_v).max().item():.3g} x |v| > 2^-7"
        assert torch.all(err_hf <= 2 * SELF_ONLY_RTOL * row_v + floor), \
            f"{what}: self-only rows, longattn vs HF {(err_hf / row_v).max().item():.3g} x |v| > 2^-6"
    if ours_lse is not None:
        assert ours_lse.dtype == torch.float32 and ours_lse.shape == lse64.shape
        so = lse64 < SELF_ONLY_LSE
        d = (ours_lse.double() - lse64).abs()
        if (~so).any():
            bound = LSE_RTOL * (1 + lse64[~so].abs().max().item())
            assert d[~so].max().item() <= bound, f"{what}: lse error {d[~so].max().item():.3g} > {bound:.3g}"
        if so.any():
            assert d[so].max().item() <= SELF_ONLY_RTOL, f"{what}: self-only lse error {d[so].max().item():.3g}"
    return int(self_only.sum())


def check_case(heads, head_dim, n_hashes, n_buckets, chunk, before, after, causal, seqlen, valid=None, batch=2,
               seed=0):
    """One HF layer vs longattn (seed= path, lse and buckets returned) vs the oracle. Returns #self-only rows."""
    config = make_config(heads, head_dim, n_hashes, n_buckets, chunk, before, after, causal)
    layer = make_layer(config, seed)
    torch.manual_seed(seed + 1)
    hidden = HIDDEN_STD * torch.randn(batch, seqlen, heads * head_dim)
    attention_mask = None if valid is None else valid.long()
    with torch.no_grad():
        hf, hf_b = run_hf(layer, hidden, attention_mask)
        qk, v = project(layer, hidden)
    kwargs = dict(n_hashes=n_hashes, n_buckets=n_buckets, chunk_length=chunk, chunks_before=before,
                  chunks_after=after, causal=causal, key_padding_mask=valid)
    if seqlen > chunk:
        padded = valid is not None and not bool(valid.all())
        expected = hf_buckets(hf_b, n_buckets, padded)
        assert hf_b.shape == (batch, heads, n_hashes, seqlen) and hf_b.dtype == torch.int64
        rotations = seed_rotations(heads, head_dim, n_hashes, n_buckets, HASH_SEED)
        assert_no_near_ties(qk, rotations, n_buckets)
        # HF hashed with exactly these rotations (the oracle's hash reproduces its buckets): seed equivalence
        assert torch.equal(reference.lsh_hash(qk, rotations, valid, n_buckets=n_buckets), expected)
        out, lse, buckets = longattn.lsh_attention(qk, v, seed=HASH_SEED, return_lse=True, return_buckets=True,
                                                   **kwargs)
        assert buckets.dtype == torch.int64 and buckets.shape == expected.shape
        assert torch.equal(buckets, expected), "longattn's buckets differ from HF's (offsets removed)"
    else:
        assert hf_b is None  # HF's standard-attention path never hashes
        expected = torch.zeros(batch, heads, 1, seqlen, dtype=torch.int64)  # unused by the oracle when S <= chunk
        out, lse = longattn.lsh_attention(qk, v, seed=HASH_SEED, return_lse=True, **kwargs)
    assert out.dtype == torch.float32 and out.shape == hf.shape == (batch, seqlen, heads, head_dim)
    ref64, lse64 = reference.lsh_attention(qk, v, expected, chunk_length=chunk, chunks_before=before,
                                           chunks_after=after, causal=causal, key_padding_mask=valid)
    return compare(out, lse, hf, ref64, lse64, v, f"H{heads} D{head_dim} x{n_hashes} nb{n_buckets} c{chunk} "
                   f"({before},{after}) causal={causal} S={seqlen}")


# (heads, head_dim, n_hashes, n_buckets, chunk_length, chunks_before, chunks_after, causal, seqlen): S > chunk
CASES = [
    (2, 16, 1, 4, 16, 1, 0, False, 64),
    (4, 32, 2, 8, 32, 1, 0, False, 128),
    (2, 64, 4, 16, 16, 1, 0, False, 128),
    (3, 32, 2, 8, 16, 1, 1, False, 96),
    (2, 32, 3, 4, 32, 2, 0, False, 96),
    (2, 16, 1, 4, 16, 1, 0, True, 64),
    (4, 32, 2, 8, 16, 1, 0, True, 128),
    (2, 64, 4, 16, 32, 1, 1, True, 128),
    (2, 16, 4, 4, 16, 0, 0, True, 64),
]


# Factorized buckets, as HF's num_buckets=[f0, f1, ...] (its own choice for long inputs is [2^(k//2), 2^(k-k//2)]).
FACTORIZED_CASES = [
    (2, 16, 1, [2, 4], 16, 1, 0, False, 64),
    (4, 32, 2, [4, 4], 32, 1, 0, False, 128),
    (2, 64, 4, [4, 8], 16, 1, 0, True, 128),
    (3, 32, 2, [2, 6, 4], 16, 1, 1, False, 192),
    (2, 16, 2, [8], 16, 1, 0, True, 64),   # a single factor is the int case
]


@pytest.mark.parametrize("case", FACTORIZED_CASES, ids=lambda c: "H{}D{}x{}nb{}c{}{}S{}".format(
    *c[:3], "x".join(map(str, c[3])), c[4], "causal" if c[7] else "", c[8]))
def test_factorized_buckets_match_hf(case):
    check_case(*case, seed=2)  # data seed 2: no float32 near-tie in any of these hashes (checked by the case)


def test_factorized_buckets_with_padding():
    valid = torch.ones(2, 128, dtype=torch.bool)
    valid[0, 100:] = False
    valid[1, :9] = False
    check_case(2, 32, 2, [4, 8], 32, 1, 0, True, 128, valid=valid)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "H{}D{}x{}nb{}c{}b{}a{}{}S{}".format(
    *c[:7], "causal" if c[7] else "", c[8]))
def test_matches_hf(case):
    n_self_only = check_case(*case)
    heads, _, n_hashes, _, _, _, _, causal, _ = case
    if causal:  # token 0 sees only itself in every round: the self-only tolerance is exercised
        assert n_self_only >= 2 * heads


@pytest.mark.skipif(not testing.emulator_available(), reason="a build without the CUDA emulator")
@pytest.mark.parametrize("case", [CASES[1], CASES[7], FACTORIZED_CASES[2]], ids=["plain", "causal", "factorized"])
def test_matches_hf_on_the_cuda_kernels(case):
    # the CUDA backend (its float32 kernels, on the emulator): the same buckets as HF and the same tolerances
    with testing.cuda_emulator():
        check_case(*case, seed=2 if isinstance(case[3], list) else 0)


def test_chunks_wrap_onto_the_same_chunk_twice():
    # n_hashes * S / chunk = 2 chunks: with (1, 1) chunk c-1 and c+1 are the same chunk, seen twice (no dedup)
    check_case(2, 16, 1, 4, 16, 1, 1, False, 32)
    check_case(2, 16, 1, 4, 16, 1, 1, True, 32)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [2, 4])
def test_padding(causal, n_hashes):
    # element 0: right padding (what ReformerModel adds); element 1: left padding, a hole inside and right padding
    S = 96
    valid = torch.ones(2, S, dtype=torch.bool)
    valid[0, S - 21:] = False
    valid[1, :7] = False
    valid[1, 40:52] = False
    valid[1, S - 3:] = False
    check_case(2, 32, n_hashes, 8, 16, 1, 0, causal, S, valid=valid)


def test_padding_in_one_batch_element_only_and_a_nearly_empty_one():
    S = 64
    valid = torch.ones(3, S, dtype=torch.bool)
    valid[1, 5:] = False            # 5 real tokens: most of its rows see only padding and themselves
    valid[2, ::3] = False
    n = check_case(2, 16, 2, 4, 16, 1, 0, False, S, valid=valid, batch=3)
    assert n > 0                    # padded queries whose whole window is padding: self-only


def test_all_ones_mask_adds_no_pad_bucket():
    # HF adds the pad bucket only when the batch has padding; an all-True key_padding_mask must not either
    valid = torch.ones(2, 64, dtype=torch.bool)
    check_case(2, 16, 2, 4, 16, 1, 0, False, 64, valid=valid)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen", [32, 20])
def test_short_sequence_is_standard_attention(causal, seqlen):
    # S <= chunk_length: HF's do_standard_self_attention (no hashing, n_hashes ignored); 32 = chunk, 20 < chunk
    check_case(2, 32, 4, 8, 32, 1, 0, causal, seqlen)
    valid = torch.ones(2, seqlen, dtype=torch.bool)
    valid[0, seqlen - 5:] = False
    valid[1, :3] = False
    check_case(2, 32, 2, 8, 32, 1, 0, causal, seqlen, valid=valid)


def test_rotations_and_buckets_arguments_match_seed():
    """seed=, rotations= (the same draw) and buckets= (HF's, offsets removed) are the same computation."""
    heads, D, n_hashes, nb, chunk, S = 2, 32, 2, 8, 16, 64
    config = make_config(heads, D, n_hashes, nb, chunk, 1, 0, True)
    layer = make_layer(config, seed=5)
    torch.manual_seed(6)
    hidden = HIDDEN_STD * torch.randn(2, S, heads * D)
    valid = torch.ones(2, S, dtype=torch.bool)
    valid[1, 50:] = False
    with torch.no_grad():
        hf, hf_b = run_hf(layer, hidden, valid.long())
        qk, v = project(layer, hidden)
    kw = dict(n_hashes=n_hashes, n_buckets=nb, chunk_length=chunk, causal=True, key_padding_mask=valid)
    out_seed, b_seed = longattn.lsh_attention(qk, v, seed=HASH_SEED, return_buckets=True, **kw)
    rotations = seed_rotations(heads, D, n_hashes, nb, HASH_SEED)
    out_rot, b_rot = longattn.lsh_attention(qk, v, rotations=rotations, return_buckets=True, **kw)
    expected = hf_buckets(hf_b, nb, True)
    out_b = longattn.lsh_attention(qk, v, buckets=expected, **kw)
    assert torch.equal(b_seed, expected) and torch.equal(b_rot, expected)
    scale = max(1.0, hf.abs().max().item())
    for out in (out_rot, out_b):
        assert (out - out_seed).abs().max().item() <= 1e-6 * scale
    # and the HF comparison on the buckets= path
    ref64, lse64 = reference.lsh_attention(qk, v, expected, chunk_length=chunk, causal=True, key_padding_mask=valid)
    compare(out_b, None, hf, ref64, lse64, v, "buckets= path")


def test_global_rng_like_hf_without_hash_seed():
    """No seed, no rotations: drawn from the global generator, as HF does with hash_seed=None."""
    heads, D, n_hashes, nb, chunk, S = 2, 16, 2, 4, 16, 64
    layer = make_layer(make_config(heads, D, n_hashes, nb, chunk, hash_seed=None), seed=2)
    torch.manual_seed(3)
    hidden = HIDDEN_STD * torch.randn(1, S, heads * D)
    with torch.no_grad():
        qk, v = project(layer, hidden)
        torch.manual_seed(99)
        _, hf_b = run_hf(layer, hidden, None)
    torch.manual_seed(99)
    _, buckets = longattn.lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=nb, chunk_length=chunk,
                                        return_buckets=True)
    assert torch.equal(buckets, hf_buckets(hf_b, nb, False))


def test_mask_convention_matches_reformer_model():
    """The attention_mask ReformerModel hands its LSHSelfAttention is the user's 1 = keep mask, and the layer's
    output is the context before the output dense: composing longattn on the captured input reproduces it."""
    heads, D, n_hashes, nb, chunk = 2, 16, 2, 4, 16
    config = make_config(heads, D, n_hashes, nb, chunk, axial_pos_embds=False, vocab_size=50,
                         max_position_embeddings=128, feed_forward_size=64, hidden_dropout_prob=0.0,
                         num_hidden_layers=1)
    torch.manual_seed(0)
    model = ReformerModel(config).eval()
    layer = model.encoder.layers[0].attention.self_attention
    assert isinstance(layer, LSHSelfAttention)
    reinit([layer.query_key, layer.value], config.hidden_size, 0)
    seen = {}
    layer.register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    layer.register_forward_hook(lambda m, args, output: seen.update(output=output))
    S = 64                                   # a multiple of the chunk length: no automatic padding
    ids = torch.randint(2, config.vocab_size, (2, S))
    attention_mask = torch.ones(2, S, dtype=torch.long)
    attention_mask[1, 45:] = 0
    with torch.no_grad():
        model(ids, attention_mask=attention_mask)
    kw = seen["kwargs"]
    assert torch.equal(kw["attention_mask"], attention_mask)
    hidden = kw["hidden_states"] if "hidden_states" in kw else seen["args"][0]
    output = seen["output"]
    with torch.no_grad():
        qk, v = project(layer, hidden)
    valid = attention_mask.bool()
    ours, buckets = longattn.lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=nb, chunk_length=chunk,
                                           seed=HASH_SEED, key_padding_mask=valid, return_buckets=True)
    expected = hf_buckets(output.buckets, nb, True)
    assert torch.equal(buckets, expected)
    context = output.hidden_states
    assert context.shape == (2, S, heads * D)  # heads concatenated, before ReformerSelfOutput's dense
    ref64, lse64 = reference.lsh_attention(qk, v, expected, chunk_length=chunk, key_padding_mask=valid)
    compare(ours, None, context.view(2, S, heads, D), ref64, lse64, v, "inside ReformerModel")
