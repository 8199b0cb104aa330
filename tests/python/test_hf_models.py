"""attn_implementation="longattn" (longattn.integrations.transformers.register) on Hugging Face models.

Models are small random-weight configs (nothing can be downloaded here), float32, with attention made peaked
(initializer_range 0.2: scores with std ~2.5) so that a wrong window, a lost padding mask, softcap or sink moves the
logits far beyond the tolerance -- test_each_feature_moves_the_logits checks that, so these tests can fail.

Oracles: the same model in float64 with transformers' "eager" attention is the truth; longattn's logits must be
within 2x the error "eager" itself makes in float32 plus 2e-6 x max|logit| (helpers.assert_matches_oracle, the
project's criterion). Only real tokens are compared on padded batches: what a padded query row holds is not
defined alike by eager (a uniform average), sdpa and longattn (zero), and no real token ever reads it.
Greedy generation must be token-for-token equal to eager's, dynamic and static caches; each test first checks that
eager's top-two logits are far enough apart at every step (else a float32 rounding could legitimately flip a token
and the seed should change).

The mask plumbing (MaskSpec: causal/sliding/bidirectional bands, query/key offsets of caches, padding) is also
checked directly against transformers' own materialised masks, over random geometries.
"""

import copy

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers as hf  # noqa: E402
from transformers import masking_utils as mu  # noqa: E402

import longattn  # noqa: E402
from longattn import reference  # noqa: E402
from longattn.integrations import transformers as lt  # noqa: E402

from helpers import ABS_FLOOR, assert_matches_oracle  # noqa: E402
from longattn import testing  # noqa: E402
from test_cuda import EMULATOR, GPU, dev  # noqa: E402,F401 (the dev fixture: a GPU, else the emulator)

NAME = lt.register()
VOCAB = 96
TOP2_MARGIN = 1e-3   # eager's top-1 vs top-2 logit gap needed at every generated step (float32 noise is ~1e-6)

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              initializer_range=0.2, max_position_embeddings=512)

CONFIGS = {
    "llama": lambda **o: hf.LlamaConfig(**{**COMMON, "num_hidden_layers": 2, **o}),
    "mistral": lambda **o: hf.MistralConfig(**{**COMMON, "num_hidden_layers": 2, "sliding_window": 7, **o}),
    "qwen2": lambda **o: hf.Qwen2Config(**{**COMMON, "num_hidden_layers": 3, "use_sliding_window": True,
                                           "sliding_window": 7, "max_window_layers": 1, **o}),
    "qwen3": lambda **o: hf.Qwen3Config(**{**COMMON, "num_hidden_layers": 2, "head_dim": 16, **o}),
    "gemma2": lambda **o: hf.Gemma2Config(**{**COMMON, "num_hidden_layers": 2, "head_dim": 16, "sliding_window": 7,
                                             "attn_logit_softcapping": 2.0, "query_pre_attn_scalar": 24, **o}),
    "gpt_oss": lambda **o: hf.GptOssConfig(**{**COMMON, "intermediate_size": 64, "num_hidden_layers": 2,
                                              "head_dim": 16, "sliding_window": 7, "num_local_experts": 4,
                                              "num_experts_per_tok": 2, **o}),
}
FAMILIES = list(CONFIGS)


def build(family, seed=0, **overrides):
    torch.manual_seed(seed)
    extra = {"experts_implementation": "eager"} if family == "gpt_oss" else {}   # grouped_mm has no float64
    model = hf.AutoModelForCausalLM.from_config(CONFIGS[family](**overrides), attn_implementation="eager",
                                                **extra).eval()
    if family == "gpt_oss":   # sinks large enough to matter (init: N(0, 0.2))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.copy_(torch.randn(layer.self_attn.sinks.shape) * 2)
    return model


def batch(seq, padding, seed=1):
    """ids (2, seq) and the 2-D mask: element 1 left-padded by 5 (generation's convention) or right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    if padding == "left":
        mask[1, :5] = 0
    elif padding == "right":
        mask[1, -5:] = 0
    return ids, (None if padding == "none" else mask)


def logits(model, impl, ids, mask, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask, **kw).logits


def check_logits(model, ids, mask, what, **kw):
    ours = logits(model, NAME, ids, mask, **kw)
    eager = logits(model, "eager", ids, mask, **kw)
    ref64 = logits(copy.deepcopy(model).double(), "eager", ids, mask, **kw)
    rows = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    assert torch.isfinite(ours[rows]).all()
    assert_matches_oracle(ours[rows], ref64[rows], eager[rows], what)
    return ours


@pytest.mark.parametrize("padding", ["none", "left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_eager(family, padding):
    model = build(family)
    ids, mask = batch(40, padding)        # longer than every sliding window (7)
    check_logits(model, ids, mask, f"{family} {padding}")


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_logits_several_tiles(family):
    # 150 tokens: several of the CPU engine's query/key tiles, windows crossing tile edges
    model = build(family, sliding_window=33) if family != "llama" else build(family)
    ids, mask = batch(150, "left")
    check_logits(model, ids, mask, f"{family} S=150")


def eager_reference_generation(model, ids, mask, new_tokens, **kw):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, **kw)
    for step, scores in enumerate(ref.scores):
        top2 = scores.topk(2, dim=-1).values
        gap = (top2[:, 0] - top2[:, 1]).min().item()
        assert gap > TOP2_MARGIN, f"test data: near-tie at step {step} (gap {gap:.2g}); change the seed"
    return ref.sequences


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_eager(family, cache, monkeypatch):
    model = build(family)
    ids, mask = batch(20, "left", seed=2)
    kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
    expected = eager_reference_generation(model, ids, mask, 12, **kw)   # 32 tokens in all: past every window
    decode_calls = []
    for fn in ("attention", "sliding_window_attention"):
        real = getattr(longattn, fn)

        def spy(q, *a, _real=real, **k):
            decode_calls.append(q.shape[1] == 1)
            return _real(q, *a, **k)
        monkeypatch.setattr(longattn, fn, spy)
    model.set_attn_implementation(NAME)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **kw)
    assert torch.equal(got, expected)
    assert sum(decode_calls) >= 11 * model.config.num_hidden_layers, "decode steps did not run on longattn"


@pytest.mark.skipif(not (GPU or EMULATOR), reason="needs a CUDA GPU or a build with the CUDA emulator")
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gpt_oss"])
def test_cuda_backend(family, dev):
    """The same models on longattn's CUDA kernels: a GPU when there is one, else the CUDA emulator (head dim 32, a
    size the CUDA kernels take). Logits against eager, and greedy generation (decode steps on the CUDA backend)."""
    over = dict(hidden_size=128) if family in ("llama", "mistral") else dict(hidden_size=128, head_dim=32)
    model = build(family, **over).to(dev)
    ids, mask = (t.to(dev) for t in batch(40, "left"))
    launches = testing.emulator_stats(reset=True)["launches"] if dev == "cpu" else None
    check_logits(model, ids, mask, f"{family} on CUDA")
    expected = eager_reference_generation(model, ids, mask, 6)
    model.set_attn_implementation(NAME)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)
    if launches is not None:    # the emulator really ran the layers: prefill + 5 decode steps, every layer
        assert testing.emulator_stats()["launches"] >= 6 * model.config.num_hidden_layers


def test_each_feature_moves_the_logits():
    """The features the tests above check change eager's logits by far more than the tolerance: a longattn that
    dropped one of them would fail."""
    ids, mask = batch(40, "left")
    rows = mask.bool()

    def moved(a, b):
        return (a - b)[rows].abs().max().item()

    bound = 1e3 * ABS_FLOOR[torch.float32]
    base = logits(build("mistral"), "eager", ids, mask)
    assert moved(base, logits(build("mistral", sliding_window=None), "eager", ids, mask)) > bound
    assert moved(base, logits(build("mistral"), "eager", ids, None)) > bound                # padding
    gemma = logits(build("gemma2"), "eager", ids, mask)
    assert moved(gemma, logits(build("gemma2", attn_logit_softcapping=None), "eager", ids, mask)) > bound
    oss = build("gpt_oss")
    with_sinks = logits(oss, "eager", ids, mask)
    with torch.no_grad():
        for layer in oss.model.layers:
            layer.self_attn.sinks.fill_(-1e4)   # exp(-1e4) = 0: no sink
    assert moved(with_sinks, logits(oss, "eager", ids, mask)) > bound


def test_bidirectional_local_layers_modernbert():
    # ModernBERT: bidirectional, local layers with |i - j| <= local_attention / 2 (here 4), global every 2nd layer
    torch.manual_seed(0)
    cfg = hf.ModernBertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, local_attention=8, global_attn_every_n_layers=2,
                              initializer_range=0.2, max_position_embeddings=256, pad_token_id=0)
    model = hf.AutoModel.from_config(cfg, attn_implementation="eager").eval()
    ids, mask = batch(60, "right")
    mask[0, :3] = 0                                                       # and left padding in element 0

    def run(m, impl):
        m.set_attn_implementation(impl)
        with torch.no_grad():
            return m(ids, attention_mask=mask).last_hidden_state

    rows = mask.bool()
    ours, eager, ref64 = run(model, NAME), run(model, "eager"), run(copy.deepcopy(model).double(), "eager")
    assert_matches_oracle(ours[rows], ref64[rows], eager[rows], "modernbert")


def packed_inputs():
    lengths = [9, 17, 6]
    ids = torch.randint(3, VOCAB, (1, sum(lengths)), generator=torch.Generator().manual_seed(3))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    cu = torch.tensor([0, 9, 26, 32], dtype=torch.int32)
    return lengths, ids, position_ids, cu


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_packed_sequences(family):
    """A packed batch (DataCollatorWithFlattening): sequences back to back in one row, positions restarting. Via
    position_ids alone (transformers' packed-sequence mask) and with the cu_seq_lens_* kwargs (varlen); both equal
    each sequence run on its own."""
    model = build(family)
    lengths, ids, position_ids, cu = packed_inputs()
    # use_cache=False: transformers looks for packed sequences only without a cache (training-style forward)
    ours = check_logits(model, ids, None, f"{family} packed", position_ids=position_ids, use_cache=False)
    flash_kw = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=17, max_length_k=17)
    via_cu = logits(model, NAME, ids, None, position_ids=position_ids, use_cache=False, **flash_kw)
    assert (via_cu - ours).abs().max().item() <= 1e-5
    start = 0
    for n in lengths:
        alone = logits(model, NAME, ids[:, start:start + n], None)
        assert (alone - ours[:, start:start + n]).abs().max().item() <= 1e-5
        start += n


def test_user_4d_masks():
    model = build("llama")
    ids, _ = batch(24, "none")
    S = ids.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril().expand(2, 1, S, S)
    ref = logits(model, "eager", ids, None)
    assert (logits(model, NAME, ids, causal) - ref).abs().max().item() <= 1e-5       # bool 4-D: served
    additive = torch.zeros(2, 1, S, S).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert (logits(model, NAME, ids, additive) - ref).abs().max().item() <= 1e-5     # 0 / finfo.min: served
    with pytest.raises(ValueError, match="arbitrary additive bias"):
        logits(model, NAME, ids, additive + 0.5 * torch.randn(2, 1, S, S))
    scattered = causal & (torch.rand(2, 1, S, S) > 0.3)
    scattered[..., torch.arange(S), torch.arange(S)] = True
    with pytest.raises(ValueError, match="not a causal/sliding-window band"):
        logits(model, NAME, ids, scattered)


def test_what_cannot_be_served_raises():
    model = build("llama", attention_dropout=0.1)
    ids, mask = batch(16, "left")
    model.set_attn_implementation(NAME)
    model.train()
    with torch.no_grad(), pytest.raises(ValueError, match="dropout"):
        model(ids, attention_mask=mask)
    model.eval()
    with pytest.raises(NotImplementedError, match="no backward pass"):
        model(ids, attention_mask=mask)                                   # grad mode on, weights require grad
    with torch.no_grad(), pytest.raises(ValueError, match="output_attentions"):
        model(ids, attention_mask=mask, output_attentions=True)


def test_register_is_idempotent_and_checks_its_name():
    assert lt.register() == NAME == "longattn"
    assert lt.register("longattn") == "longattn"
    assert hf.AttentionInterface._global_mapping[NAME] is lt.attention_forward
    assert mu.AttentionMaskInterface._global_mapping[NAME] is lt.mask_interface
    assert lt.register("longattn-alt") == "longattn-alt"
    for bad in ("sdpa", "eager", "", None, 3):
        with pytest.raises(ValueError, match="name"):
            lt.register(bad)


def test_from_config_and_set_attn_implementation():
    cfg = CONFIGS["llama"]()
    torch.manual_seed(0)
    model = hf.AutoModelForCausalLM.from_config(cfg, attn_implementation=NAME).eval()
    assert model.config._attn_implementation == NAME
    ids, mask = batch(16, "left")
    ours = logits(model, NAME, ids, mask)
    model.set_attn_implementation("sdpa")
    sdpa = logits(model, "sdpa", ids, mask)
    rows = mask.bool()
    assert (ours - sdpa)[rows].abs().max().item() <= 1e-5


# --- the mask plumbing on its own: MaskSpec vs transformers' materialised masks ---------------------------------

class _Module(torch.nn.Module):
    is_causal = True


def _mask_functions(rng):
    w = int(rng.integers(1, 12))
    return [("causal", mu.causal_mask_function),
            ("sliding causal", mu.sliding_window_causal_mask_function(w)),
            ("bidirectional", mu.bidirectional_mask_function),
            ("sliding bidirectional", mu.sliding_window_bidirectional_mask_function(w)),
            ("unrecognised band", lambda b, h, q, kv: (kv <= q + 1) & (kv >= q - w)),      # dense fallback
            ]


@pytest.mark.parametrize("seed", range(12))
def test_mask_spec_matches_materialised_masks(seed):
    """Random geometries as caches produce them (queries at q_offset.., keys at kv_offset.., a longer padded 2-D
    mask, static-cache tails): longattn through MaskSpec equals masked attention with transformers' own 4-D mask
    (sdpa_mask), empty rows as zero."""
    import numpy as np
    rng = np.random.default_rng(seed)
    B, Hq, Hk, D = 2, 4, 2, 16
    Sq = int(rng.choice([1, 3, 17, 70]))
    past = int(rng.integers(0, 40))
    Sk = Sq + past + int(rng.choice([0, 0, 9]))           # + an empty static-cache tail sometimes
    kv_offset = int(rng.choice([0, 0, 5]))
    q_offset = kv_offset + past
    attention_mask = torch.ones(B, kv_offset + Sq + past, dtype=torch.bool)
    attention_mask[1, :int(rng.integers(0, 6))] = False   # left padding
    q = torch.randn(B, Hq, Sq, D) * 2
    k, v = torch.randn(B, Hk, Sk, D), torch.randn(B, Hk, Sk, D)
    for what, fn in _mask_functions(rng):
        spec = lt.mask_interface(B, Sq, Sk, q_offset, kv_offset, fn, attention_mask)
        dense = mu.sdpa_mask(batch_size=B, q_length=Sq, kv_length=Sk, q_offset=q_offset, kv_offset=kv_offset,
                             mask_function=fn, attention_mask=attention_mask, allow_is_causal_skip=False)
        ours, _ = lt.attention_forward(_Module(), q, k, v, spec, scaling=0.25)
        bshd = [t.transpose(1, 2) for t in (q, k, v)]
        ref64, _ = reference.masked_attention(*bshd, dense, scale=0.25)
        ref32, _ = reference.masked_attention(*bshd, dense, scale=0.25, compute_dtype=torch.float32)
        assert ours.shape == (B, Sq, Hq, D) and ours.is_contiguous()
        assert_matches_oracle(ours, ref64, ref32, f"{what} Sq={Sq} Sk={Sk} offsets={q_offset},{kv_offset}")


def sliding_window_overlay(sliding_window):
    """Named like transformers' own factory but meaning something else (as a changed transformers might): longattn
    recognises the name, then its check of the function's real output must refuse it."""
    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx >= q_idx - sliding_window           # one key more than transformers' kv > q - W
    return inner_mask


def test_mask_spec_checks_the_functions_it_recognises():
    B, S = 1, 12
    q = k = v = torch.randn(B, 2, S, 8)
    fn = mu.and_masks(sliding_window_overlay(4), mu.causal_mask_function)
    assert lt._band_of(fn) is not None                      # recognised by name...
    spec = lt.mask_interface(B, S, S, 0, 0, fn, None)
    with pytest.raises(ValueError, match="does not give the mask longattn read from it"):
        lt.attention_forward(_Module(), q, k, v, spec)      # ...and refused by its values
    for fn in (mu.causal_mask_function, mu.sliding_window_causal_mask_function(3), mu.bidirectional_mask_function,
               mu.sliding_window_bidirectional_mask_function(3)):
        assert lt._band_of(fn) is not None, fn              # transformers' own: no dense evaluation needed


def test_mask_spec_rejects_what_is_not_a_band():
    B, S = 1, 12
    q = k = v = torch.randn(B, 2, S, 8)
    checker = lt.mask_interface(B, S, S, 0, 0, lambda b, h, qi, kv: (qi + kv) % 2 == 0, None)
    with pytest.raises(ValueError, match="not a causal/sliding-window band"):
        lt.attention_forward(_Module(), q, k, v, checker)
    chunked = lt.mask_interface(B, S, S, 0, 0, mu.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long)),
                                None)
    with pytest.raises(ValueError, match="not a causal/sliding-window band"):
        lt.attention_forward(_Module(), q, k, v, chunked)
