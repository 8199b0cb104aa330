"""longattn.integrations.transformers.accelerate (docs/huggingface.md): Longformer and Reformer models, end to end.

Small random-weight configs (no downloads), float32, initializer_range 0.2 so that attention is peaked (scores with
std ~2.5: a wrong window, a lost global token or a lost padding mask moves the outputs by O(1)). Each accelerated
model is compared with the unmodified model (a deep copy) on the same inputs, and both with the unmodified model in
float64, the truth: longattn within 2x the error the unmodified float32 model makes against it, plus 2e-6 x
max|output| (helpers.assert_matches_oracle, the project's criterion).

Reformer's hashing draws its rotations from the global RNG in the activations' dtype, so a float64 copy would hash
differently: the float64 run replays the float32 model's buckets (`replay_buckets`). The accelerated model hashes
with the module's own _hash_vectors; its buckets must equal the unmodified model's (asserted). In decoders, the
first token sees only itself in every LSH layer (its -1e5 self score), where float32 has a resolution of 2^-7
(tests/python/test_lsh_hf.py) and both implementations are off the exact value by up to that much, differently:
from the second LSH layer on, hash margins that small could then send a token to another bucket in one model
and not the other. The decoder tests therefore replay the unmodified model's buckets in the accelerated model too,
and check separately that the first LSH layer's own hashing agrees.
"""

import copy

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers as hf  # noqa: E402
from transformers.models.longformer.modeling_longformer import LongformerSelfAttention  # noqa: E402
from transformers.models.reformer.modeling_reformer import LocalSelfAttention, LSHSelfAttention  # noqa: E402

from longattn.integrations import transformers as lt  # noqa: E402

from helpers import assert_matches_oracle  # noqa: E402

VOCAB = 96
SELF_ONLY_RESOLUTION = 2.0 ** -6   # Reformer's -1e5 self-only rows, float32 (tests/python/test_lsh_hf.py), x2


# --- Longformer ---------------------------------------------------------------------------------------------------

def longformer_config(**o):
    return hf.LongformerConfig(**{**dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4,
                                         attention_window=[8, 16], num_hidden_layers=2, intermediate_size=128,
                                         max_position_embeddings=300, pad_token_id=1, bos_token_id=0,
                                         eos_token_id=2, sep_token_id=2, attention_probs_dropout_prob=0.0,
                                         hidden_dropout_prob=0.0, initializer_range=0.2), **o})


def longformer_inputs(S=70, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, S), generator=g)
    mask = torch.ones(2, S, dtype=torch.long)
    mask[1, S - 11:] = 0                  # right padding
    mask[1, :4] = 0                       # and left padding
    mask[0, 30:33] = 0                    # a hole: key padding masks express it
    glob = torch.zeros(2, S, dtype=torch.long)
    glob[0, [0, 10, 11]] = 1              # adjacent globals, inside each other's window
    glob[1, [5, 40, S - 2]] = 1           # S - 2 is padding: padding wins
    return ids, mask, glob


def compare_models(make, run, what, rows=None):
    torch.manual_seed(0)
    model = make().eval()
    accelerated = lt.accelerate(copy.deepcopy(model))
    with torch.no_grad():
        expected = run(model)
        ours = run(accelerated)
        ref64 = run(copy.deepcopy(model).double())
    for name in expected:
        a, e, r = ours[name], expected[name], ref64[name]
        if rows is not None and a.dim() >= 2 and a.shape[:2] == rows.shape:
            a, e, r = a[rows], e[rows], r[rows]
        assert torch.isfinite(a).all(), f"{what} {name}: non-finite"
        assert_matches_oracle(a, r, e, f"{what} {name}")
    return model, accelerated


@pytest.mark.parametrize("with_globals", [False, True])
def test_longformer_model(with_globals):
    ids, mask, glob = longformer_inputs()
    kw = dict(attention_mask=mask, global_attention_mask=glob if with_globals else None)

    def run(m):
        out = m(ids, **kw)
        return {"last_hidden_state": out.last_hidden_state, "pooler": out.pooler_output}
    compare_models(lambda: hf.LongformerModel(longformer_config()), run, f"LongformerModel globals={with_globals}")


def test_longformer_heads():
    ids, mask, glob = longformer_inputs(S=64)
    ids[:, 0] = 0                                          # <s>
    ids[:, [6, 7, 45]] = 2                                 # </s></s> after the "question", </s> at the end:
    #                                                        QA puts global attention on the question tokens
    compare_models(lambda: hf.LongformerForMaskedLM(longformer_config()),
                   lambda m: {"logits": m(ids, attention_mask=mask, global_attention_mask=glob).logits},
                   "LongformerForMaskedLM")
    compare_models(lambda: hf.LongformerForSequenceClassification(longformer_config(num_labels=3)),
                   lambda m: {"logits": m(ids, attention_mask=mask).logits},   # global attention on <s> by itself
                   "LongformerForSequenceClassification")
    compare_models(lambda: hf.LongformerForQuestionAnswering(longformer_config()),
                   lambda m: {k: getattr(m(ids, attention_mask=mask), k) for k in ("start_logits", "end_logits")},
                   "LongformerForQuestionAnswering")


def test_longformer_long_sequence_several_tiles():
    cfg = longformer_config(attention_window=[64], num_hidden_layers=1, max_position_embeddings=600)
    ids, mask, glob = longformer_inputs(S=300, seed=4)
    compare_models(lambda: hf.LongformerModel(cfg),
                   lambda m: {"h": m(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state},
                   "LongformerModel S=300 window 64")


# --- Reformer -----------------------------------------------------------------------------------------------------

def reformer_config(**o):
    return hf.ReformerConfig(**{**dict(vocab_size=VOCAB, attention_head_size=16, num_attention_heads=2,
                                       hidden_size=32, attn_layers=["lsh", "local"], num_hashes=2, num_buckets=8,
                                       lsh_attn_chunk_length=16, local_attn_chunk_length=16,
                                       lsh_num_chunks_before=1, lsh_num_chunks_after=0, local_num_chunks_before=1,
                                       local_num_chunks_after=0, is_decoder=False, hash_seed=3,
                                       axial_pos_embds=False, max_position_embeddings=512, feed_forward_size=64,
                                       hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
                                       local_attention_probs_dropout_prob=0.0, initializer_range=0.2,
                                       pad_token_id=0), **o})


class BucketTape:
    """Records the buckets each LSH layer's _hash_vectors returns (by module name, in call order), and replays
    them into another copy of the model."""

    def __init__(self):
        self.calls = {}

    def record(self, model):
        for name, m in model.named_modules():
            if isinstance(m, LSHSelfAttention):
                original = m._hash_vectors

                def hashed(*a, _name=name, _orig=original, **k):
                    out = _orig(*a, **k)
                    self.calls.setdefault(_name, []).append(out)
                    return out
                m._hash_vectors = hashed
        return model

    def replay(self, model):
        for name, m in model.named_modules():
            if isinstance(m, LSHSelfAttention):
                queue = list(self.calls.get(name, []))
                m._hash_vectors = lambda *a, _q=queue, **k: _q.pop(0)
        return model


def run_reformer(make, inputs, what, replay_in_accelerated, rows):
    torch.manual_seed(0)
    model = make().eval()
    accelerated = lt.accelerate(copy.deepcopy(model))
    tape = BucketTape()
    with torch.no_grad():
        expected = inputs(tape.record(model))
        if replay_in_accelerated:
            ours_tape = None
            ours = inputs(tape.replay(accelerated))
        else:
            ours_tape = BucketTape()
            ours = inputs(ours_tape.record(accelerated))
        ref64 = inputs(tape.replay(copy.deepcopy(model).double()))
    if ours_tape is not None:   # the accelerated model hashed for itself: the same buckets, every layer
        assert ours_tape.calls.keys() == tape.calls.keys()
        for name, calls in tape.calls.items():
            assert all(torch.equal(a, b) for a, b in zip(calls, ours_tape.calls[name])), f"{what}: {name} buckets"
    assert tape.calls, f"{what}: no LSH layer hashed (sequence not longer than the chunk?)"
    for name in expected:
        a, e, r = ours[name], expected[name], ref64[name]
        if rows is not None and a.shape[:2] == rows.shape:
            a, e, r = a[rows], e[rows], r[rows]
        assert torch.isfinite(a).all()
        assert_matches_oracle(a, r, e, f"{what} {name}")
        # and directly against the float32 model: where float32 itself is far from the truth (rows whose scores are
        # all -1e9 get weight exp(-1e9 - fl(-1e9 + log n)) = 1 per key in float32, 1/n in float64), the oracle
        # criterion above is loose, but the unmodified model's float32 behaviour is the contract, to the
        # resolution of its -1e5 self-only rows
        scale = e.abs().max().item()
        assert (a - e).abs().max().item() <= SELF_ONLY_RESOLUTION * scale, f"{what} {name}: vs the float32 model"


def reformer_batch(S=100, pad=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, S), generator=g)
    mask = torch.ones(2, S, dtype=torch.long)
    if pad:
        mask[1, S - pad:] = 0
    return ids, mask


ENCODER_CASES = {
    "lsh+local int buckets": dict(),
    "factorized buckets": dict(num_buckets=[2, 4], attn_layers=["lsh", "lsh", "local"]),
    "4 hashes, chunks after": dict(num_hashes=4, lsh_num_chunks_after=1, local_num_chunks_after=1),
    "no hash seed (global RNG)": dict(hash_seed=None),
    "local then lsh": dict(attn_layers=["local", "lsh"]),
}


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_reformer_encoder(case):
    """Encoders hash for themselves in both models (identical buckets, asserted); the whole output is compared,
    padded positions included (the module defines them: padded queries still attend)."""
    ids, mask = reformer_batch()

    def inputs(m):
        torch.manual_seed(7)   # hash_seed=None draws from the global RNG: same state for every run
        return {"h": m(ids, attention_mask=mask).last_hidden_state}
    run_reformer(lambda: hf.ReformerModel(reformer_config(**ENCODER_CASES[case])), inputs, case, False, None)


def test_reformer_encoder_long_padding_fully_masked_local_rows():
    # 48 padding tokens: whole chunks (and their previous chunk) of padding, whose local rows see no real key
    # (the module then averages with its -1e9 scores: reproduced)
    ids, mask = reformer_batch(S=96, pad=48)
    run_reformer(lambda: hf.ReformerModel(reformer_config(attn_layers=["local", "lsh", "local"])),
                 lambda m: {"h": m(ids, attention_mask=mask).last_hidden_state}, "long padding", False, None)


DECODER_CASES = {
    "lsh+local": dict(),
    "factorized, 3 lsh layers": dict(num_buckets=[2, 4], attn_layers=["lsh", "lsh", "local", "lsh"]),
    "local only": dict(attn_layers=["local", "local"]),
    "2 chunks before": dict(attn_layers=["local", "lsh"], local_num_chunks_before=2, lsh_num_chunks_before=2),
}


@pytest.mark.parametrize("case", list(DECODER_CASES))
def test_reformer_decoder_lm_head(case):
    ids, mask = reformer_batch(pad=0)
    cfg = dict(is_decoder=True, **DECODER_CASES[case])
    lsh = "lsh" in cfg.get("attn_layers", ["lsh"])

    def inputs(m):
        return {"logits": m(ids, use_cache=False).logits}
    if lsh:
        run_reformer(lambda: hf.ReformerModelWithLMHead(reformer_config(**cfg)), inputs, case, True, None)
    else:
        compare_models(lambda: hf.ReformerModelWithLMHead(reformer_config(**cfg)), inputs, case)


def test_reformer_decoder_first_lsh_layer_hashes_alike():
    """Without replay: the first LSH layer sees bit-identical inputs in both models, so its own hashing (the
    module's _hash_vectors, called by the accelerated layer) gives identical buckets and its output agrees."""
    torch.manual_seed(0)
    model = hf.ReformerModel(reformer_config(is_decoder=True)).eval()
    accelerated = lt.accelerate(copy.deepcopy(model))
    ids, mask = reformer_batch(S=96)      # a multiple of the chunk length: the model adds no padding
    seen = {}
    for tag, m in (("hf", model), ("ours", accelerated)):
        layer = m.encoder.layers[0].attention.self_attention
        layer.register_forward_hook(lambda mod, a, out, _t=tag: seen.setdefault(_t, out))
        with torch.no_grad():
            m(ids, attention_mask=mask)
    assert torch.equal(seen["hf"].buckets, seen["ours"].buckets)
    rows = mask.bool()
    diff = (seen["hf"].hidden_states - seen["ours"].hidden_states)[rows]
    # token 0 of each sequence sees only itself: the -1e5 rows' float32 resolution (2^-7 of |v|, test_lsh_hf.py)
    scale = seen["hf"].hidden_states.abs().max().item()
    assert diff.abs().max().item() <= SELF_ONLY_RESOLUTION * scale


def test_reformer_heads_and_padding():
    ids, mask = reformer_batch()
    rows = mask.bool()
    run_reformer(lambda: hf.ReformerForMaskedLM(reformer_config()),
                 lambda m: {"logits": m(ids, attention_mask=mask).logits}, "ReformerForMaskedLM", False, None)
    run_reformer(lambda: hf.ReformerForSequenceClassification(reformer_config(num_labels=3)),
                 lambda m: {"logits": m(ids, attention_mask=mask).logits}, "ReformerForSequenceClassification",
                 False, None)
    run_reformer(lambda: hf.ReformerModelWithLMHead(reformer_config(is_decoder=True)),
                 lambda m: {"logits": m(ids, attention_mask=mask, use_cache=False).logits}, "LM head, padding",
                 True, rows)


def test_reformer_generation_uses_the_cache_path():
    """generate(): the prompt runs on longattn (and fills the module's cache: states and buckets), each new token
    against the cache runs the module's own code; the tokens equal the unmodified model's."""
    torch.manual_seed(0)
    model = hf.ReformerModelWithLMHead(reformer_config(is_decoder=True, attn_layers=["local", "local"])).eval()
    accelerated = lt.accelerate(copy.deepcopy(model))
    ids, _ = reformer_batch(S=40, pad=0)
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
        got = accelerated.generate(ids, max_new_tokens=8, do_sample=False)
    for scores in ref.scores:
        top2 = scores.topk(2, dim=-1).values
        assert (top2[:, 0] - top2[:, 1]).min().item() > 1e-3, "test data: near-tie; change the seed"
    assert torch.equal(got, ref.sequences)


# --- what accelerate() changes, and what it refuses --------------------------------------------------------------

def test_accelerate_changes_only_the_attention_computation():
    torch.manual_seed(0)
    model = hf.ReformerModel(reformer_config()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert lt.accelerate(model) is model
    assert lt.accelerate(model) is model                                   # idempotent
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    kinds = [type(m) for m in model.modules() if getattr(m, "_longattn_accelerated", False)]
    assert kinds == [LSHSelfAttention, LocalSelfAttention]
    lf = lt.accelerate(hf.LongformerModel(longformer_config()).eval())
    assert all(m._longattn_accelerated for m in lf.modules() if isinstance(m, LongformerSelfAttention))


def test_accelerate_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="no LongformerSelfAttention"):
        lt.accelerate(hf.BertModel(hf.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=64)))
    with pytest.raises(TypeError, match="model"):
        lt.accelerate("a model")
    with pytest.raises(ValueError, match="lsh_num_chunks_before"):
        lt.accelerate(hf.ReformerModel(reformer_config(lsh_num_chunks_before=20, lsh_num_chunks_after=20)))
    ids, mask = reformer_batch(S=32, pad=0)
    # a decoder whose local neighbourhood wraps around onto the query's own chunk (2 chunks, 2 before)
    model = lt.accelerate(hf.ReformerModel(reformer_config(is_decoder=True, attn_layers=["local"],
                                                           local_num_chunks_before=2)).eval())
    with torch.no_grad(), pytest.raises(ValueError, match="local_num_chunks_before"):
        model(ids)
    model = lt.accelerate(hf.ReformerModel(reformer_config()).eval())
    with torch.no_grad(), pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    with torch.no_grad(), pytest.raises(ValueError, match="float16"):
        model.half()(ids)
    model = lt.accelerate(hf.ReformerModel(reformer_config(lsh_attention_probs_dropout_prob=0.1)))
    model.train()
    with torch.no_grad(), pytest.raises(ValueError, match="lsh_attention_probs_dropout_prob"):
        model(ids)
    lf = lt.accelerate(hf.LongformerModel(longformer_config()).eval())
    lids, lmask, _ = longformer_inputs(S=64)
    with pytest.raises(NotImplementedError, match="no backward pass"):
        lf(lids, attention_mask=lmask)                                     # grad mode on
