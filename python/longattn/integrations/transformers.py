"""Hugging Face transformers on longattn (tested with transformers 5.24).

- `register(name="longattn")` makes `attn_implementation="longattn"` run every attention layer of models that call
  transformers' AttentionInterface (Llama, Mistral, Qwen2/3, Gemma 2/3, gpt-oss, ModernBERT, ...).
- `accelerate(model)` swaps the attention computation of Longformer and Reformer models (which do not use that
  interface) for longattn's sliding-window and LSH kernels, in place.

How a mask reaches the kernels. transformers builds a model's masks through the AttentionMaskInterface function
registered under the model's attn_implementation, handing it a `mask_function(batch, head, q_pos, kv_pos)` (causal,
sliding window, bidirectional, packed sequences, ...), the query/key offsets into the sequence and the 2-D padding
mask. Ours materialises nothing: it returns a `MaskSpec` that keeps those arguments. The first layer that uses it
works out, once per forward, what the pattern is in longattn's terms: a band of key offsets j - i (causal and
sliding windows) and a key padding mask, or packed sequences (varlen). HF's own mask functions are recognised by
name and then checked by evaluating the function itself on rows of the real grid (every row when the grid is
small); an unrecognised function, or a 4-D mask a user passed in, is evaluated in full and accepted only if it is
exactly such a band and padding pattern. Anything else raises: longattn never serves a different mask than the
model asked for. Details: docs/huggingface.md.
"""

from __future__ import annotations

import math
import types

import torch

import longattn

__all__ = ["register", "accelerate", "MaskSpec", "TESTED_TRANSFORMERS"]

TESTED_TRANSFORMERS = ("5.24.0",)
_BUILTIN_NAMES = frozenset({"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                            "flex_attention", "paged|eager", "paged|sdpa", "paged|flash_attention_2"})
_FULL_CHECK_CELLS = 1 << 20   # grids up to this many (batch, query, key) cells are checked exhaustively
_SAMPLED_ROWS = 16            # else this many query rows (ends, middle, spread) are checked


def _masking_utils():
    try:
        from transformers import masking_utils
    except ImportError as e:  # pragma: no cover - transformers is a test-only dependency
        raise ImportError("longattn.integrations.transformers needs Hugging Face transformers "
                          f"(tested: {', '.join(TESTED_TRANSFORMERS)}): pip install transformers") from e
    return masking_utils


# ----------------------------------------------------------------------------------------------------------------
# register(): AttentionInterface + AttentionMaskInterface

def register(name: str = "longattn") -> str:
    """Register longattn with transformers' AttentionInterface and AttentionMaskInterface under `name`.

    Then `AutoModelForCausalLM.from_config(cfg, attn_implementation=name)`, `from_pretrained(...,
    attn_implementation=name)` or `model.set_attn_implementation(name)` run the model's attention layers on
    longattn. Registering the mask function matters: without it transformers hands custom attention functions no
    mask at all, and causality and padding would be lost. Calling it again is harmless. Returns `name`.
    """
    if not isinstance(name, str) or not name or name in _BUILTIN_NAMES:
        raise ValueError(f"name: got {name!r}; expected a non-empty string that is not one of transformers' own "
                         f"implementations ({', '.join(sorted(_BUILTIN_NAMES))})")
    masking_utils = _masking_utils()
    from transformers import AttentionInterface
    AttentionInterface.register(name, attention_forward)
    masking_utils.AttentionMaskInterface.register(name, mask_interface)
    return name


class MaskSpec:
    """A mask as transformers' mask factories describe it, not materialised: visible(b, i, j) =
    mask_function(b, 0, q_offset + i, kv_offset + j) and padding[b, kv_offset + j].

    To transformers it passes for an already-prepared 4-D mask (`ndim == 4`, `shape`), so the mask factories and
    `generate` hand it on unchanged. The attention function resolves it (see `geometry`) once per forward.
    """

    ndim = 4
    dtype = torch.bool

    def __init__(self, batch_size: int, q_length: int, kv_length: int, q_offset: int, kv_offset: int,
                 mask_function, padding: torch.Tensor | None, use_vmap: bool, device):
        self.batch_size, self.q_length, self.kv_length = int(batch_size), int(q_length), int(kv_length)
        self.q_offset, self.kv_offset = int(q_offset), int(kv_offset)
        self.mask_function, self.padding, self.use_vmap = mask_function, padding, use_vmap
        self.device = torch.device(device)
        self._geometry = None

    @property
    def shape(self):
        return torch.Size((self.batch_size, 1, self.q_length, self.kv_length))

    def dim(self):
        return 4

    def to(self, *args, **kwargs):
        return self

    def contiguous(self):
        return self

    def __repr__(self):
        return (f"MaskSpec(batch={self.batch_size}, q={self.q_length}@{self.q_offset}, "
                f"kv={self.kv_length}@{self.kv_offset}, fn={getattr(self.mask_function, '__qualname__', '?')}, "
                f"padding={'none' if self.padding is None else 'yes'})")

    def geometry(self) -> "_Geometry":
        if self._geometry is None:
            self._geometry = _resolve(self)
        return self._geometry


def mask_interface(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                   attention_mask=None, use_vmap=False, device="cpu", **kwargs):
    """transformers' AttentionMaskInterface entry: same arguments as its sdpa_mask; returns a MaskSpec."""
    if isinstance(attention_mask, MaskSpec):   # prepared earlier (generate with a static cache): as transformers does
        return attention_mask
    masking_utils = _masking_utils()
    if mask_function is None:
        mask_function = masking_utils.causal_mask_function
    if "cache_position" in kwargs and kwargs["cache_position"] is not None and not q_offset:  # transformers 4.x
        q_offset = int(kwargs["cache_position"].reshape(-1)[0])
    if isinstance(q_offset, torch.Tensor):     # static caches report it as a 0-d tensor
        q_offset = int(q_offset)
    padding = None
    if attention_mask is not None:
        attention_mask = attention_mask.to(device=device, dtype=torch.bool)
        padding = masking_utils.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        padding = padding[:, kv_offset:kv_offset + kv_length]
        if bool(padding.all()):
            padding = None
    return MaskSpec(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, padding, use_vmap, device)


class _Geometry:
    """A mask in longattn's terms: key j is visible to query i iff lo <= j - i <= hi (None: unbounded), the key
    is not padding (`padding` (B, Sk) bool, None = none), and, for packed batches, both are in one sequence
    (`segments` (B, S): sequence ids)."""

    def __init__(self, lo, hi, padding=None, segments=None):
        self.lo, self.hi, self.padding, self.segments = lo, hi, padding, segments


class _Band:
    """A pattern in absolute positions: visible iff lo <= kv_pos - q_pos <= hi (None: unbounded); `segments`:
    packed-sequence ids (positions then count within each sequence)."""

    def __init__(self, lo=None, hi=None, segments=None):
        self.lo, self.hi, self.segments = lo, hi, segments

    def meet(self, other: "_Band") -> "_Band | None":
        if self.segments is not None and other.segments is not None:
            return None
        lo = other.lo if self.lo is None else self.lo if other.lo is None else max(self.lo, other.lo)
        hi = other.hi if self.hi is None else self.hi if other.hi is None else min(self.hi, other.hi)
        return _Band(lo, hi, self.segments if self.segments is not None else other.segments)


def _closure(fn) -> dict:
    code = getattr(fn, "__code__", None)
    if code is None or not fn.__closure__:
        return {}
    return {name: cell.cell_contents for name, cell in zip(code.co_freevars, fn.__closure__)}


def _band_of(fn) -> _Band | None:
    """The band of one of transformers' own mask functions, read from how it was built; None if unrecognised."""
    mu = _masking_utils()
    if fn is mu.causal_mask_function:
        return _Band(None, 0)
    if fn is getattr(mu, "bidirectional_mask_function", None):
        return _Band(None, None)
    name = getattr(fn, "__qualname__", "")
    cells = _closure(fn)
    if name == "sliding_window_overlay.<locals>.inner_mask":            # kv > q - W
        return _Band(1 - int(cells["sliding_window"]), None)
    if name == "sliding_window_bidirectional_overlay.<locals>.inner_mask":   # |q - kv| <= W
        w = int(cells["sliding_window"])
        return _Band(-w, w)
    if name == "and_masks.<locals>.and_mask":
        band = _Band(None, None)
        for part in cells.get("mask_functions", ()):
            piece = _band_of(part)
            band = None if piece is None else band.meet(piece)
            if band is None:
                return None
        return band
    if name == "remap_positions_for_packed_sequence.<locals>.inner_mask":
        # positions restart per packed sequence and count up by one inside it (that is how transformers finds the
        # sequences), so offsets of positions are offsets of indices within a sequence
        inner = _band_of(cells["mask_function"])
        return None if inner is None or inner.segments is not None else inner
    if name == "packed_sequence_mask_function.<locals>.inner_mask":
        return _Band(None, None, segments=cells["packed_sequence_mask"])
    return None


def _check_rows(spec: MaskSpec, rows: torch.Tensor, expected_fn) -> bool:
    """Evaluates the mask function on `rows` x every key (as transformers' sdpa_mask does, by broadcasting) and
    compares with expected_fn(b, i, j) (broadcast index tensors)."""
    dev = spec.device
    b = torch.arange(spec.batch_size, device=dev).view(-1, 1, 1, 1)
    h = torch.zeros(1, dtype=torch.long, device=dev).view(1, -1, 1, 1)
    i = rows.to(dev).view(1, 1, -1, 1)
    j = torch.arange(spec.kv_length, device=dev).view(1, 1, 1, -1)
    got = spec.mask_function(b, h, i + spec.q_offset, j + spec.kv_offset)
    want = expected_fn(b, i, j)
    shape = (spec.batch_size, 1, rows.numel(), spec.kv_length)
    return torch.equal(torch.as_tensor(got, device=dev).expand(shape), want.expand(shape))


def _rows_to_check(spec: MaskSpec) -> torch.Tensor:
    n = spec.q_length
    if spec.batch_size * n * spec.kv_length <= _FULL_CHECK_CELLS:
        return torch.arange(n)
    picks = {0, 1, n // 2, n - 2, n - 1} | {round(t * (n - 1) / (_SAMPLED_ROWS - 6)) for t in range(_SAMPLED_ROWS - 5)}
    return torch.tensor(sorted(p for p in picks if 0 <= p < n))


def _band_visible(lo, hi, i, j):
    d = j - i
    ok = torch.ones_like(d, dtype=torch.bool)
    if lo is not None:
        ok = ok & (d >= lo)
    if hi is not None:
        ok = ok & (d <= hi)
    return ok


def _resolve(spec: MaskSpec) -> _Geometry:
    if spec.q_length == 0 or spec.kv_length == 0 or spec.batch_size == 0:
        return _Geometry(None, None, spec.padding)
    band = _band_of(spec.mask_function)
    if band is not None:
        shift = spec.q_offset - spec.kv_offset   # kv_pos - q_pos = (j - i) - shift
        lo = None if band.lo is None else band.lo + shift
        hi = None if band.hi is None else band.hi + shift
        seg = band.segments
        if seg is not None:
            seg = seg.to(spec.device)
            if spec.q_offset or spec.kv_offset or spec.q_length != spec.kv_length or tuple(seg.shape) != (
                    spec.batch_size, spec.q_length):
                seg = None
                band = None

        def expected(b, i, j):
            ok = _band_visible(lo, hi, i, j)
            if seg is not None:
                ok = ok & (seg[b, i] == seg[b, j])
            return ok
        if band is not None and _check_rows(spec, _rows_to_check(spec), expected):
            return _Geometry(lo, hi, spec.padding, seg)
        if band is not None:
            raise ValueError(f"attention_mask: transformers' {spec.mask_function.__qualname__} does not give the "
                             "mask longattn read from it (has transformers changed its mask functions? tested: "
                             f"{', '.join(TESTED_TRANSFORMERS)}); use attn_implementation='sdpa' for this model")
    # not one of transformers' own patterns: evaluate it in full and accept an exact band + padding only
    masking_utils = _masking_utils()
    dense = masking_utils.sdpa_mask(batch_size=spec.batch_size, q_length=spec.q_length, kv_length=spec.kv_length,
                                    q_offset=spec.q_offset, kv_offset=spec.kv_offset,
                                    mask_function=spec.mask_function, attention_mask=None,
                                    allow_is_causal_skip=False, use_vmap=spec.use_vmap, device=spec.device)
    lo, hi, cols = _band_from_dense(dense, "attention_mask (the model's mask function)")
    padding = cols if spec.padding is None else spec.padding & cols
    return _Geometry(lo, hi, None if bool(padding.all()) else padding)


def _band_from_dense(mask: torch.Tensor, what: str):
    """mask (B, 1 or H, Sq, Sk) bool -> (lo, hi, columns) with mask == columns[b, j] and lo <= j - i <= hi, exactly;
    else ValueError."""
    if mask.dim() != 4:
        raise ValueError(f"{what}: expected a 4-D mask (batch, 1, q, kv), got shape {tuple(mask.shape)}")
    if mask.shape[1] != 1:
        if not bool((mask == mask[:, :1]).all()):
            raise ValueError(f"{what}: differs between heads (shape {tuple(mask.shape)}); longattn takes one mask "
                             "for all heads")
        mask = mask[:, :1]
    m = mask[:, 0]                                                     # (B, Sq, Sk)
    B, Sq, Sk = m.shape
    cols = m.any(dim=1)                                                # keys some query sees: the rest is padding
    rows_any = m.any(dim=2)                                            # (B, Sq)
    lo = hi = None
    if bool(rows_any.any()):
        j = torch.arange(Sk, device=m.device)
        i = torch.arange(Sq, device=m.device).view(1, -1)
        first = torch.where(m, j, Sk).amin(dim=2) - i                  # first visible key's offset, per row
        last = torch.where(m, j, -1).amax(dim=2) - i
        lo = int(first[rows_any].min())
        hi = int(last[rows_any].max())
        lo = None if lo <= 1 - Sq else lo       # every row's band reaches key 0: unbounded on this grid
        hi = None if hi >= Sk - 1 else hi       # every row's band reaches the last key
    i = torch.arange(Sq, device=m.device).view(1, -1, 1)
    j = torch.arange(Sk, device=m.device).view(1, 1, -1)
    rebuilt = cols[:, None, :] & _band_visible(lo, hi, i, j)
    if not torch.equal(rebuilt.expand_as(m), m):
        raise ValueError(f"{what}: this mask is not a causal/sliding-window band combined with key padding, the "
                         "patterns longattn serves; use attn_implementation='sdpa' or 'eager' for it")
    return lo, hi, cols


def _geometry_from_tensor(mask: torch.Tensor) -> _Geometry:
    """A 4-D mask tensor given by the user (transformers passes those through): bool, or float with only 0 and
    -inf / the dtype's minimum (an additive mask, not a bias)."""
    if mask.dtype != torch.bool:
        if not mask.dtype.is_floating_point:
            raise ValueError(f"attention_mask: a 4-D mask of dtype {mask.dtype}; expected bool or float")
        low = torch.finfo(mask.dtype).min
        blocked = (mask == float("-inf")) | (mask <= low)
        if not bool(((mask == 0) | blocked).all()):
            raise ValueError("attention_mask: a 4-D float mask with values other than 0 and -inf/finfo.min is an "
                             "arbitrary additive bias, which longattn does not take; use attn_implementation="
                             "'sdpa' or 'eager' for it")
        mask = ~blocked
    lo, hi, cols = _band_from_dense(mask, "attention_mask (4-D)")
    return _Geometry(lo, hi, None if bool(cols.all()) else cols)


# ----------------------------------------------------------------------------------------------------------------
# The attention function

def _check_grad_free(*tensors):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise NotImplementedError(
            "attn_implementation='longattn': longattn has no backward pass yet, so it cannot train; run inference "
            "under torch.no_grad() / torch.inference_mode(), or use attn_implementation='sdpa' for training")


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' AttentionInterface entry. query (B, Hq, Sq, D), key/value (B, Hk, Sk, D): read in place as
    longattn's (B, S, H, D) views. Returns (out (B, Sq, Hq, Dv) contiguous, None): no attention weights."""
    if dropout and float(dropout) > 0:
        raise ValueError(f"dropout: got {dropout}; longattn has no attention dropout (the module is in training "
                         "mode with attention_dropout > 0): call model.eval(), or set attention_dropout=0")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions: longattn never materialises attention weights; use "
                         "attn_implementation='eager' to get them")
    for unsupported in ("position_bias", "head_mask"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"{unsupported}: given, but longattn has no additive bias or head mask; use "
                             "attn_implementation='eager' for this model")
    sinks = kwargs.get("s_aux")
    _check_grad_free(query, key, value, sinks)
    softcap = kwargs.get("softcap") or 0.0
    if sinks is not None:
        sinks = sinks.detach()
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)   # (B, S, H, D) views
    options = dict(scale=scaling, softcap=float(softcap), sinks=sinks)

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:                          # packed batch from a flattening collator
        geo = attention_mask.geometry() if isinstance(attention_mask, MaskSpec) else None
        lo, hi = (geo.lo, geo.hi) if geo is not None else _band_without_mask(module, kwargs)
        return _packed(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), lo, hi, options,
                       kwargs.get("max_length_q"), kwargs.get("max_length_k")), None

    if attention_mask is None:
        lo, hi = _band_without_mask(module, kwargs)
        geo = _Geometry(lo + (k.shape[1] - q.shape[1]) if lo is not None else None,
                        hi + (k.shape[1] - q.shape[1]) if hi is not None else None)
    elif isinstance(attention_mask, MaskSpec):
        if attention_mask.kv_length != k.shape[1] or attention_mask.q_length != q.shape[1]:
            raise ValueError(f"attention_mask: built for {attention_mask.q_length} queries x "
                             f"{attention_mask.kv_length} keys, but the layer has {q.shape[1]} x {k.shape[1]}")
        geo = attention_mask.geometry()
    elif isinstance(attention_mask, torch.Tensor):
        if attention_mask.dim() != 4 or attention_mask.shape[-2:] != (q.shape[1], k.shape[1]):
            raise ValueError(f"attention_mask: got shape {tuple(attention_mask.shape)}; expected (batch, 1, "
                             f"{q.shape[1]}, {k.shape[1]})")
        geo = _geometry_from_tensor(attention_mask)
    else:
        raise ValueError(f"attention_mask: got a {type(attention_mask).__name__}; longattn takes the masks its own "
                         "mask interface builds (register() registers it), 4-D bool/float tensors or None")

    if geo.segments is not None:
        if geo.padding is not None:
            raise ValueError("attention_mask: packed sequences with padding; transformers never builds this")
        B, S = geo.segments.shape
        ids = (geo.segments.to(torch.int64) + torch.arange(B, device=geo.segments.device).view(-1, 1) * (S + 1))
        _, counts = torch.unique_consecutive(ids.reshape(-1), return_counts=True)
        cu = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=q.device)
        cu[1:] = torch.cumsum(counts, 0).to(q.device)
        flat = lambda t: t.reshape(B * S, *t.shape[2:])   # noqa: E731  (a view when B == 1)
        out = _packed(flat(q), flat(k), flat(v), cu, cu, geo.lo, geo.hi, options, int(counts.max()),
                      int(counts.max()), already_flat=True)
        return out.view(B, S, *out.shape[1:]), None
    return _banded(q, k, v, geo.lo, geo.hi, geo.padding, options), None


def _band_without_mask(module, kwargs):
    """No mask from transformers (a model that builds none): the module's causality and sliding_window."""
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    window = kwargs.get("sliding_window")
    lo = None if not window else 1 - int(window)
    return (lo, 0) if causal else (lo, None if not window else int(window) - 1)


def _window(lo, hi, base, Sq, Sk):
    """Band lo <= j - i <= hi as longattn's window (left, right) around the bottom-right diagonal j = i + base,
    -1 = unbounded (also where the bound excludes no key of this grid); None if the band is empty."""
    if lo is not None and hi is not None and lo > hi:
        return None
    left = -1 if lo is None or base - lo >= Sk - 1 else base - lo
    right = -1 if hi is None or hi - base >= Sq - 1 else hi - base
    if left < -1 or right < -1 or (lo is not None and base - lo == -1) or (hi is not None and hi - base == -1):
        raise ValueError(f"attention_mask: every query's visible keys lie on one side of its bottom-right aligned "
                         f"position (key offsets j - i in {lo}..{hi} for {Sq} queries and {Sk} keys); longattn's "
                         "windows contain that position")
    return left, right


def _banded(q, k, v, lo, hi, padding, options):
    Sq, Sk = q.shape[1], k.shape[1]
    if hi is not None and Sq - 1 + hi < Sk - 1:
        # keys past the last one any query sees (a static cache's empty tail, say): dropped, so that the band's
        # upper edge is the bottom-right diagonal
        keep = max(Sq + hi, 0)
        k, v = k[:, :keep], v[:, :keep]
        padding = None if padding is None else padding[:, :keep]
        Sk = keep
    window = _window(lo, hi, Sk - Sq, Sq, Sk)
    if window is None or Sk == 0:     # no query sees any key: empty rows (out = 0)
        return longattn.attention(q, k[:, :0], v[:, :0], **options)
    left, right = window
    if left == -1 and right in (-1, 0):
        return longattn.attention(q, k, v, causal=right == 0, key_padding_mask=padding, **options)
    return longattn.sliding_window_attention(q, k, v, window=(left, right), key_padding_mask=padding, **options)


def _packed(q, k, v, cu_q, cu_k, lo, hi, options, max_q, max_k, already_flat=False):
    if not already_flat:
        if q.shape[0] != 1:
            raise ValueError(f"cu_seq_lens_q: a packed batch has batch size 1, got query batch {q.shape[0]}")
        q, k, v = q[0], k[0], v[0]
    # within a sequence queries and keys are the same tokens (Sq_b == Sk_b): the diagonal is j == i
    window = _window(lo, hi, 0, 1 << 62, 1 << 62)
    if window is None:
        raise ValueError(f"attention_mask: key offsets {lo}..{hi} leave every query without keys")
    left, right = window
    max_q = None if max_q is None else int(max_q)
    max_k = None if max_k is None else int(max_k)
    out = longattn.varlen_attention(q, k, v, cu_q, cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                                    window=(left, right), **options)
    return out if already_flat else out.unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------------
# accelerate(): Longformer and Reformer

def accelerate(model):
    """Run the self-attention of a Longformer or Reformer model (any of their task heads) on longattn, in place.

    LongformerSelfAttention: sliding window of attention_window // 2 keys each side, global tokens (with the
    layer's *_global projections for global rows) and padding through sliding_window_attention and attention.
    Reformer's LSHSelfAttention: lsh_attention on the buckets the layer's own hashing gives (same rotations, same
    random-number use, int or factorized num_buckets), with its chunk lengths, chunks before/after and causality;
    LocalSelfAttention: chunked local attention as dense attention over each chunk's neighbourhood. Parameters,
    buffers and everything else in the model stay as they are; outputs equal the unmodified model's up to float32
    rounding. Reformer's one-token steps against its generation cache stay on the module's own code. Raises
    ValueError for a model without those layers and for settings longattn cannot reproduce. Returns the model.
    """
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
    from transformers.models.reformer.modeling_reformer import LocalSelfAttention, LSHSelfAttention
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    replaced = 0
    for module in model.modules():
        if isinstance(module, LongformerSelfAttention):
            _check_head_dim(module.head_dim, "hidden_size / num_attention_heads")
            _install(module, _longformer_forward)
        elif isinstance(module, LSHSelfAttention):
            _check_lsh_config(module)
            _install(module, _lsh_forward)
        elif isinstance(module, LocalSelfAttention):
            _check_local_config(module)
            _install(module, _local_forward)
        else:
            continue
        replaced += 1
    if not replaced:
        raise ValueError(f"model: {type(model).__name__} has no LongformerSelfAttention, LSHSelfAttention or "
                         "LocalSelfAttention module; accelerate() serves Longformer and Reformer models (for "
                         "models that use transformers' AttentionInterface call register() and pass "
                         "attn_implementation='longattn')")
    return model


def _install(module, forward):
    if getattr(module, "_longattn_accelerated", False):
        return
    module.forward = types.MethodType(forward, module)
    module._longattn_accelerated = True


def _check_head_dim(d, what):
    if not 1 <= d <= 256:
        raise ValueError(f"{what}: head size {d}; longattn's CPU kernels take 1..256")


def _check_lsh_config(m):
    _check_head_dim(m.attention_head_size, "attention_head_size")
    if m.chunk_length is None or m.chunk_length < 1:
        raise ValueError(f"lsh_attn_chunk_length: got {m.chunk_length}; longattn needs a positive chunk length")
    if m.num_chunks_before + m.num_chunks_after > 32:
        raise ValueError(f"lsh_num_chunks_before + lsh_num_chunks_after: got {m.num_chunks_before} + "
                         f"{m.num_chunks_after}; longattn takes at most 32 neighbouring chunks")
    if m.num_hashes > 64:
        raise ValueError(f"num_hashes: got {m.num_hashes}; longattn takes 1..64")


def _check_local_config(m):
    _check_head_dim(m.attention_head_size, "attention_head_size")
    if m.chunk_length is None or m.chunk_length < 1:
        raise ValueError(f"local_attn_chunk_length: got {m.chunk_length}; longattn needs a positive chunk length")


def _check_inference(module, dropout, output_attentions, what):
    if output_attentions:
        raise ValueError("output_attentions: longattn never materialises attention weights; run the model without "
                         "accelerate() to get them")
    if module.training and dropout > 0:
        raise ValueError(f"{what}: {dropout} in training mode; longattn has no attention dropout: call "
                         "model.eval() or set it to 0")


def _longformer_forward(self, hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                        is_global_attn=None, output_attentions=False):
    """LongformerSelfAttention on longattn: local rows by sliding_window_attention (window attention_window // 2 on
    each side, global keys added once, padding keys hidden), global rows by dense attention with the *_global
    projections; padding rows are exactly zero, as in the module."""
    _check_inference(self, self.dropout, output_attentions, "attention_probs_dropout_prob")
    B, S, E = hidden_states.shape
    H, D = self.num_heads, self.head_dim
    if is_index_masked is None:        # called directly with the float mask: < 0 padding, > 0 global
        is_index_masked = attention_mask < 0
    if is_index_global_attn is None:
        is_index_global_attn = attention_mask > 0
    if is_global_attn is None:
        is_global_attn = bool(is_index_global_attn.any())
    valid = ~is_index_masked
    padding = None if bool(valid.all()) else valid
    glob = (is_index_global_attn & valid) if is_global_attn else None

    def heads(x):
        return x.view(B, x.shape[1], H, D)

    q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
    _check_grad_free(q, k, v)
    w = self.one_sided_attn_window_size
    out = longattn.sliding_window_attention(q, k, v, window=(w, w), global_tokens=glob, key_padding_mask=padding)
    if padding is not None:
        out[~valid] = 0
    if glob is not None and bool(glob.any()):
        counts = glob.sum(1)
        G = int(counts.max())
        # global positions of each batch element first, in order; slots past its count point at position 0
        order = torch.sort((~glob).to(torch.int8), dim=1, stable=True).indices[:, :G]      # (B, G)
        real = torch.arange(G, device=glob.device).view(1, -1) < counts.view(-1, 1)        # (B, G)
        order = torch.where(real, order, torch.zeros_like(order))
        hg = torch.gather(hidden_states, 1, order.unsqueeze(-1).expand(B, G, E))
        qg = heads(self.query_global(hg))
        kg, vg = heads(self.key_global(hidden_states)), heads(self.value_global(hidden_states))
        og = longattn.attention(qg, kg, vg, key_padding_mask=padding)                       # (B, G, H, D)
        bi = torch.arange(B, device=glob.device).view(-1, 1).expand(B, G)
        out[bi[real], order[real]] = og[real]
    return (out.view(B, S, E),)


def _reformer_outputs():
    from transformers.models.reformer import modeling_reformer as mr
    return mr.LSHSelfAttentionOutput, mr.LocalSelfAttentionOutput


def _check_reformer_dtype(hidden_states):
    if hidden_states.dtype == torch.float16:
        raise ValueError("hidden_states: float16; Reformer switches to other masking constants in float16 "
                         "(-1e4 / -1e3 instead of -1e9 / -1e5), which longattn's LSH kernel does not take: run the "
                         "model in float32 or bfloat16")


def _lsh_forward(self, hidden_states, attention_mask=None, num_hashes=None, buckets=None, past_buckets_states=None,
                 use_cache=False, output_attentions=False, **kwargs):
    """LSHSelfAttention on longattn: the layer's own hashing (_hash_vectors: rotations, random-number use and
    padding bucket as in the module), then sort, chunked attention and round merge by lsh_attention."""
    if past_buckets_states is not None and len(past_buckets_states) > self.layer_idx:
        # one new token against the generation cache: the module's own code (a gather, not a kernel's job)
        return type(self).forward(self, hidden_states, attention_mask, num_hashes, buckets, past_buckets_states,
                                  use_cache, output_attentions, **kwargs)
    _check_inference(self, self.dropout, output_attentions, "lsh_attention_probs_dropout_prob")
    _check_reformer_dtype(hidden_states)
    LSHOutput, _ = _reformer_outputs()
    B, S, _ = hidden_states.shape
    H, D = self.num_attention_heads, self.attention_head_size
    num_hashes = self.num_hashes if num_hashes is None else num_hashes
    qk = self.query_key(hidden_states).view(B, S, H, D)
    v = self.value(hidden_states).view(B, S, H, D)
    _check_grad_free(qk, v)
    padding = None if attention_mask is None else attention_mask.to(torch.bool)
    common = dict(chunk_length=self.chunk_length, chunks_before=self.num_chunks_before,
                  chunks_after=self.num_chunks_after, causal=bool(self.is_decoder), key_padding_mask=padding)
    if S <= self.chunk_length:         # the module's standard-attention path: no hashing, no buckets
        out = longattn.lsh_attention(qk, v, n_hashes=1, n_buckets=2, **common)
        return LSHOutput(hidden_states=out.view(B, S, H * D), attention_probs=(), buckets=None)
    if S % self.chunk_length:
        raise ValueError(f"hidden_states: sequence length {S} is not a multiple of lsh_attn_chunk_length "
                         f"{self.chunk_length} (ReformerModel pads its inputs to one)")
    if self.num_buckets is None:
        self._set_num_buckets(S)
    factors = [self.num_buckets] if isinstance(self.num_buckets, int) else list(self.num_buckets)
    n_buckets = math.prod(factors)
    if buckets is None:
        offset_buckets = self._hash_vectors(qk.transpose(1, 2), num_hashes, attention_mask)
    else:
        offset_buckets = buckets
    offset_buckets = offset_buckets.reshape(B, H, num_hashes, S)
    has_padding = attention_mask is not None and int(attention_mask.sum()) < B * attention_mask.shape[-1]
    per_round = n_buckets + (1 if has_padding else 0)
    plain = offset_buckets - per_round * torch.arange(num_hashes, device=qk.device).view(1, 1, -1, 1)
    out = longattn.lsh_attention(qk, v, n_hashes=num_hashes, n_buckets=n_buckets, buckets=plain, **common)
    return LSHOutput(hidden_states=out.view(B, S, H * D), attention_probs=(), buckets=offset_buckets)


def _masked_row_value(n_keys: int, device) -> torch.Tensor:
    """Reformer replaces masked scores by -1e9: a row whose keys are all masked gets weight exp(-1e9 - lse) on each
    of its n keys, lse computed in float32 (where -1e9 + log n rounds back to -1e9), as the module computes it."""
    scores = torch.full((n_keys,), -1e9, dtype=torch.float32, device=device)
    return torch.exp(scores[0] - torch.logsumexp(scores, 0))


def _local_forward(self, hidden_states, attention_mask=None, past_buckets_states=None, use_cache=False,
                   output_attentions=False, **kwargs):
    """LocalSelfAttention on longattn: each chunk's queries attend the keys of chunks c - before .. c + after
    (cyclic, as the module's look-adjacent), gathered into one dense attention call per chunk; padding keys and
    (decoder) later positions hidden."""
    if past_buckets_states is not None and len(past_buckets_states) > self.layer_idx:
        return type(self).forward(self, hidden_states, attention_mask, past_buckets_states, use_cache,
                                  output_attentions, **kwargs)
    _check_inference(self, self.dropout, output_attentions, "local_attention_probs_dropout_prob")
    _check_reformer_dtype(hidden_states)
    _, LocalOutput = _reformer_outputs()
    B, S, _ = hidden_states.shape
    H, D, L = self.num_attention_heads, self.attention_head_size, self.chunk_length
    q = self.query(hidden_states).view(B, S, H, D)
    k = self.key(hidden_states).view(B, S, H, D)
    v = self.value(hidden_states).view(B, S, H, D)
    _check_grad_free(q, k, v)
    causal = bool(self.is_decoder)
    scale = 1.0 / math.sqrt(D)
    keep = None if attention_mask is None else attention_mask.to(torch.bool)     # (B, S) True = real token
    if S <= L:                          # the module's standard path: every key, one chunk
        out, lse = longattn.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=keep, return_lse=True)
        n_keys, v_sum = S, v.sum(1, keepdim=True)                                # (B, 1, H, D)
    else:
        if S % L:
            raise ValueError(f"hidden_states: sequence length {S} is not a multiple of local_attn_chunk_length {L} "
                             "(ReformerModel pads its inputs to one)")
        n = S // L
        before, after = self.num_chunks_before, self.num_chunks_after
        # neighbour chunks first, the query's own chunk last: then "causal" is the bottom-right diagonal
        offsets = [o for o in range(-before, after + 1) if o != 0] + [0]
        c = torch.arange(n, device=q.device).view(-1, 1)
        chunk_ids = (c + torch.tensor(offsets, device=q.device).view(1, -1)) % n      # (n, nb)
        nb = len(offsets)
        if causal and bool((chunk_ids[:, :-1] == c).any()):
            raise ValueError(f"local_num_chunks_before / local_num_chunks_after: {before} / {after} reach around "
                             f"the {n} chunks of this input onto the query's own chunk, which the decoder masks "
                             "position by position; longattn cannot express that: use longer inputs")
        kc = k.view(B, n, L, H, D)[:, chunk_ids].reshape(B * n, nb * L, H, D)
        vc = v.view(B, n, L, H, D)[:, chunk_ids].reshape(B * n, nb * L, H, D)
        visible = torch.ones(B, n, nb, L, dtype=torch.bool, device=q.device)
        if keep is not None:
            visible = keep.view(B, n, L)[:, chunk_ids]
        if causal:   # neighbours: visible iff earlier in the sequence (wrapped "before" chunks are later)
            earlier = torch.cat([chunk_ids[:, :-1] < c, torch.ones_like(c, dtype=torch.bool)], dim=1)
            visible = visible & earlier.view(1, n, nb, 1)
        visible = visible.reshape(B * n, nb * L)
        out, lse = longattn.attention(q.reshape(B * n, L, H, D), kc, vc, causal=causal, scale=scale,
                                      key_padding_mask=None if bool(visible.all()) else visible, return_lse=True)
        out, lse = out.view(B, S, H, D), lse.view(B, n, H, L).permute(0, 2, 1, 3).reshape(B, H, S)
        n_keys = nb * L
        v_sum = vc.sum(1).view(B, n, 1, H, D).expand(B, n, L, H, D).reshape(B, S, H, D)
    empty = torch.isneginf(lse).transpose(1, 2)                                   # (B, S, H): no visible key
    if bool(empty.any()):
        filler = (_masked_row_value(n_keys, q.device) * v_sum.float()).to(out.dtype).expand(B, S, H, D)
        out = torch.where(empty.unsqueeze(-1), filler, out)
    return LocalOutput(hidden_states=out.reshape(B, S, H * D), attention_probs=())
