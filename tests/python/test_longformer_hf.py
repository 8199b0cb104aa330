"""longattn reproduces Hugging Face `LongformerSelfAttention`, checked against the real module.

What the HF layer computes (transformers/models/longformer/modeling_longformer.py, read for transformers 5.x; the
convention test below pins it against what `LongformerModel` really passes, so a change upstream fails loudly):

- Inputs: `hidden_states` (B, S, E) with S a multiple of `attention_window` (LongformerModel pads to it), and a
  float `attention_mask` (B, S) whose *sign* is the token kind: 0 = local token, > 0 = global token (finfo.max
  since transformers 5; +10000 in 4.x), < 0 = padding (finfo.min; -10000 in 4.x). The layer reads it only as
  `mask != 0` (drop from the sliding window), and through `is_index_masked = mask < 0`,
  `is_index_global_attn = mask > 0` and the Python bool `is_global_attn = is_index_global_attn.any()`, which the
  encoder computes once and passes to every layer. A padding token flagged global stays padding (0 * 2 = 0).
- Local rows (a query that is not global): q = query(h) / sqrt(D), k = key(h), v = value(h); the query at i sees
  keys i - w/2 .. i + w/2 (w = attention_window, the *total* width, so longattn's window is (w//2, w//2)), keys
  outside [0, S) absent, plus every global key of its batch element, scored with the same *local* k and v. A global
  key inside the window is dropped from the window part (`mask != 0`) so it is counted once -- docs/semantics.md's
  "counted once". Different global counts per batch element are fine: HF pads the global-key columns to the largest
  count with finfo.min.
- Global rows: recomputed from scratch with the separate projections: qg = query_global(h[global rows]) / sqrt(D),
  kg = key_global(h), vg = value_global(h) over *all* positions, dense softmax over every non-padding key. The
  local-row result for those positions is overwritten.
- Padding rows: their probabilities are zeroed, so their output is exactly 0; padding keys are dropped from every
  window and from the global rows.
- It returns a 1-tuple `(context,)`, context (B, S, E) = heads concatenated, *before* the output dense / LayerNorm
  (those live in LongformerSelfOutput).

So with q, k, v, qg, kg, vg taken from the module's own linears (unscaled: longattn's default scale = 1/sqrt(D)
is the division HF applies to q), the layer is
    out = sliding_window_attention(q, k, v, window=(w//2, w//2), global_tokens=g)
    out[global rows] = attention(qg[global rows], kg, vg)
Padding: no key-padding mask here, but the window depends only on j - i, so a *contiguous* run of real tokens
(right padding -- what LongformerModel itself adds -- or left padding) is the same computation on the slice of real
tokens, with zeros written to the padding rows; that is what the padding test does. Padding holes *inside* the
sequence cannot be expressed this way (removing tokens would shift window distances); longattn's key_padding_mask
serves them, tested against the real model in test_hf_accelerate.py.

Tolerance: fp32 throughout. The float64 oracle of the same composition (longattn.reference) is the truth; longattn
must be within 2x the error HF's own fp32 implementation makes against it, plus a floor of 2e-6 x output scale
(helpers.assert_matches_oracle, the project's criterion). Independently of that, longattn and HF must agree to
2e-5 x max|output|: both accumulate at most S (<= 128) fp32 terms into a convex combination of v rows, so each sits
a few float32 ulps (1.2e-7) from exact -- HF's own error against the oracle measures ~5e-7..1e-6 x max|output| on these
cases -- and 2e-5 leaves >10x headroom for different summation orders and HF's pre-division of q by sqrt(D). A wrong
window bound (off by one either side) or dropping the global keys from the local rows moves the output by ~5
(about max|output| itself) with these score magnitudes (scores have std ~3, far from a uniform softmax).
"""


import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import LongformerConfig  # noqa: E402
from transformers.models.longformer.modeling_longformer import LongformerModel, LongformerSelfAttention  # noqa: E402

import longattn  # noqa: E402
from longattn import reference  # noqa: E402

from helpers import assert_matches_oracle  # noqa: E402

HIDDEN_STD = 3.0   # makes scores std ~3: peaked softmax, so off-by-one windows or duplicated keys show up clearly
AGREE_RTOL = 2e-5  # longattn vs HF, relative to max|output| (see the module docstring)


def make_config(hidden, heads, window, layers=1):
    return LongformerConfig(hidden_size=hidden, num_attention_heads=heads, attention_window=[window] * layers,
                            num_hidden_layers=layers, intermediate_size=2 * hidden, vocab_size=64,
                            max_position_embeddings=300, pad_token_id=1, attention_probs_dropout_prob=0.0,
                            hidden_dropout_prob=0.0)


def make_layer(hidden, heads, window, seed=0):
    torch.manual_seed(seed)
    return LongformerSelfAttention(make_config(hidden, heads, window), layer_id=0).eval()


def layer_mask(global_tokens, valid):
    """The float (B, S) mask LongformerModel hands each layer: 0 local, finfo.max global, finfo.min padding."""
    mask = torch.zeros(global_tokens.shape, dtype=torch.float32)
    mask[global_tokens & valid] = torch.finfo(torch.float32).max
    mask[~valid] = torch.finfo(torch.float32).min
    return mask


def run_hf(layer, hidden, global_tokens, valid):
    mask = layer_mask(global_tokens, valid)
    is_index_global_attn = mask > 0
    (context,) = layer(hidden, attention_mask=mask, is_index_masked=mask < 0,
                       is_index_global_attn=is_index_global_attn,
                       is_global_attn=bool(is_index_global_attn.flatten().any().item()), output_attentions=False)
    return context


def compose(layer, hidden, global_tokens, valid, swa, dense):
    """HF's layer as docs/semantics.md operations: swa(q, k, v, window, g) for every row, then dense(qg, kg, vg) for the
    global rows. valid must be one contiguous run of True per batch element (left and/or right padding)."""
    B, S, E = hidden.shape
    H, D = layer.num_heads, layer.head_dim
    half = layer.one_sided_attn_window_size          # attention_window // 2

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], H, D)

    q, k, v = heads(layer.query(hidden)), heads(layer.key(hidden)), heads(layer.value(hidden))
    kg, vg = heads(layer.key_global(hidden)), heads(layer.value_global(hidden))
    g = global_tokens & valid
    if bool(valid.all()):  # one call for the whole batch: per-element global sets of different sizes
        out = swa(q, k, v, (half, half), g)
        segments = [(b, 0, S) for b in range(B)]
    else:                  # padding: each batch element on its slice of real tokens
        out, segments = None, []
        for b in range(B):
            pos = valid[b].nonzero().squeeze(1)
            lo, hi = int(pos[0]), int(pos[-1]) + 1
            assert int(pos.numel()) == hi - lo, "padding holes inside a sequence are not expressible"
            sl = slice(lo, hi)
            part = swa(q[b:b + 1, sl], k[b:b + 1, sl], v[b:b + 1, sl], (half, half), g[b:b + 1, sl])
            out = part.new_zeros(B, S, H, D) if out is None else out   # padding rows stay exactly 0
            out[b:b + 1, sl] = part
            segments.append((b, lo, hi))
    out = out.clone()
    for b, lo, hi in segments:
        rows = g[b, lo:hi].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        qg = heads(layer.query_global(hidden[b:b + 1, lo:hi][:, rows]))        # only the global tokens' states
        out[b:b + 1, lo + rows] = dense(qg, kg[b:b + 1, lo:hi], vg[b:b + 1, lo:hi]).to(out.dtype)
    return out.reshape(B, S, H * D)


def longattn_ops():
    def swa(q, k, v, window, g):
        return longattn.sliding_window_attention(q, k, v, window=window, global_tokens=g if bool(g.any()) else None)
    return swa, lambda q, k, v: longattn.attention(q, k, v)


def reference_ops():
    def swa(q, k, v, window, g):
        return reference.sliding_window_attention(q, k, v, window=window, global_tokens=g if bool(g.any()) else None)[0]
    return swa, lambda q, k, v: reference.attention(q, k, v)[0]


def check_case(hidden_size, heads, window, seqlen, global_rows, valid=None, batch=2, seed=0):
    layer = make_layer(hidden_size, heads, window, seed)
    torch.manual_seed(seed + 1)
    hidden = HIDDEN_STD * torch.randn(batch, seqlen, hidden_size)
    g = torch.zeros(batch, seqlen, dtype=torch.bool)
    for b, rows in enumerate(global_rows):
        g[b, list(rows)] = True
    valid = torch.ones(batch, seqlen, dtype=torch.bool) if valid is None else valid
    with torch.no_grad():
        hf = run_hf(layer, hidden, g, valid)
        ours = compose(layer, hidden, g, valid, *longattn_ops())
        ref64 = compose(layer, hidden, g, valid, *reference_ops())
    assert ours.dtype == torch.float32 and ours.shape == hf.shape == (batch, seqlen, hidden_size)
    scale = max(1.0, hf.abs().max().item())
    diff = (ours - hf).abs().max().item()
    assert diff <= AGREE_RTOL * scale, f"longattn vs HF: max|diff| {diff:.3g} > {AGREE_RTOL * scale:.3g}"
    assert_matches_oracle(ours, ref64, hf, "longformer context")
    assert torch.all(ours[~valid] == 0) and torch.all(hf[~valid] == 0), "padding rows are exactly zero"


# (hidden, heads, attention_window, seqlen): D = 32 and D = 64; S a multiple of the window, several windows long
SHAPES = [(128, 4, 16, 64), (128, 4, 32, 128), (512, 8, 32, 128)]


@pytest.mark.parametrize("hidden_size,heads,window,seqlen", SHAPES)
def test_local_only(hidden_size, heads, window, seqlen):
    check_case(hidden_size, heads, window, seqlen, global_rows=[[], []])


@pytest.mark.parametrize("hidden_size,heads,window,seqlen", SHAPES)
def test_global_tokens(hidden_size, heads, window, seqlen):
    # Different sets and counts per batch element: the edges, the middle, two adjacent globals inside each other's
    # window (counted once), and one right at a window edge of its neighbour.
    S, half = seqlen, window // 2
    check_case(hidden_size, heads, window, seqlen,
               global_rows=[[0, S - 1], [0, 5, 6, 5 + half, S // 2, S - 2, S - 1]])


@pytest.mark.parametrize("hidden_size,heads,window,seqlen", SHAPES[:2])
def test_global_tokens_in_one_batch_element_only(hidden_size, heads, window, seqlen):
    check_case(hidden_size, heads, window, seqlen, global_rows=[[], [seqlen // 3]])
    check_case(hidden_size, heads, window, seqlen, global_rows=[[0, 1, 2, 3], []], seed=3)


@pytest.mark.parametrize("with_globals", [False, True])
def test_padding_left_and_right(with_globals):
    # Batch element 0 right-padded (as LongformerModel pads to a multiple of the window), element 1 left-padded.
    S = 64
    valid = torch.ones(2, S, dtype=torch.bool)
    valid[0, S - 13:] = False
    valid[1, :9] = False
    rows = [[0, 20, S - 14], [9, 30, S - 1]] if with_globals else [[], []]
    check_case(128, 4, 16, S, global_rows=rows, valid=valid)


def test_mask_convention_matches_longformer_model():
    """The arguments run_hf builds are the ones a real LongformerModel passes to its self-attention layer, and that
    layer returns the context before the output dense: composing longattn on the captured input reproduces the
    captured output."""
    config = make_config(128, 4, 16)
    torch.manual_seed(0)
    model = LongformerModel(config, add_pooling_layer=False).eval()
    layer = model.encoder.layer[0].attention.self
    seen = {}
    layer.register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    layer.register_forward_hook(lambda m, args, output: seen.update(output=output))
    S = 48                                     # a multiple of the window: no automatic padding
    ids = torch.randint(3, config.vocab_size, (2, S))
    attention_mask = torch.ones(2, S, dtype=torch.long)
    attention_mask[1, 37:] = 0                 # right padding
    global_attention_mask = torch.zeros(2, S, dtype=torch.long)
    global_attention_mask[0, [0, 25]] = 1
    global_attention_mask[1, [0, 3, 4, 40]] = 1  # 40 is padding: padding wins
    with torch.no_grad():
        model(ids, attention_mask=attention_mask, global_attention_mask=global_attention_mask)
    valid = attention_mask.bool()
    g = global_attention_mask.bool() & valid
    kw = seen["kwargs"]
    mask = kw["attention_mask"]
    assert mask.shape == (2, S)
    assert torch.equal(mask > 0, g) and torch.equal(mask < 0, ~valid) and torch.equal(mask == 0, valid & ~g)
    assert torch.equal(kw["is_index_masked"], ~valid) and torch.equal(kw["is_index_global_attn"], g)
    assert kw["is_global_attn"] is True
    expected = layer_mask(g, valid)
    assert torch.equal(torch.sign(mask), torch.sign(expected))

    (hidden,) = seen["args"]
    (context,) = seen["output"]
    with torch.no_grad():
        ours = compose(layer, hidden, g, valid, *longattn_ops())
    scale = max(1.0, context.abs().max().item())
    assert (ours - context).abs().max().item() <= AGREE_RTOL * scale
