"""Shared checks: longattn is held to the error plain PyTorch makes doing the same math in the same dtype."""

import torch

from longattn import _C

# Floors for when PyTorch's own error happens to be tiny: a few units in the last place of each dtype, scaled by
# the output magnitude (outputs are convex combinations of v rows, so |out| <= max |v|).
ABS_FLOOR = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_matches_oracle(out, ref64, same_dtype_ref, what="out"):
    """max|out - ref64| <= 2 * max|same_dtype_ref - ref64| + floor (FlashAttention's test criterion)."""
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    finite = torch.isfinite(ref64)
    ours = (out.double() - ref64)[finite].abs().max().item() if finite.any() else 0.0
    torch_err = (same_dtype_ref.double() - ref64)[finite].abs().max().item() if finite.any() else 0.0
    scale = ref64[finite].abs().max().item() if finite.any() else 1.0
    bound = 2 * torch_err + ABS_FLOOR[out.dtype if out.dtype in ABS_FLOOR else torch.float32] * max(1.0, scale)
    assert ours <= bound, f"{what}: error {ours:.3g} > bound {bound:.3g} (PyTorch in {out.dtype}: {torch_err:.3g})"
    # -inf (empty rows) must match exactly
    assert torch.equal(torch.isneginf(out.double()), torch.isneginf(ref64)), f"{what}: -inf pattern differs"


def p_rounding(dtype):
    """The dtype the active CPU path rounds the probabilities to before they multiply v (its 16-bit tiles:
    avx512_bf16 for bfloat16; amx for bfloat16, and float16 where the CPU has AMX-FP16; amx_model for both), or
    None where the float32 engine runs (16-bit inputs converted, P kept in float32)."""
    isa = _C.cpu_isa()
    if dtype == torch.bfloat16 and isa in ("avx512_bf16", "amx", "amx_model"):
        return torch.bfloat16
    if dtype == torch.float16 and (isa == "amx_model" or (isa == "amx" and _C.cpu_amx_fp16_supported())):
        return torch.float16
    return None


def bshd(b, s, h, d, dtype=torch.float32, layout="bshd"):
    """A (b, s, h, d) tensor; layout 'bhsd' gives a transposed (non-contiguous) view, as from a (B, H, S, D) model."""
    if layout == "bhsd":
        return torch.randn(b, h, s, d).to(dtype).transpose(1, 2)
    return torch.randn(b, s, h, d).to(dtype)


def assert_nan_in_v_rule(device):
    """The rule of docs/semantics.md, on either backend: a NaN/Inf in v at key j can reach rows of the query heads
    reading that kv head only in a 64-row query tile that visits j's key tile (P·V multiplies a 0 weight by it, as
    SDPA does); never another batch element, never a kv head it is not in, never a row 128 or more positions away
    from every row that attends key j, and never a row that sees no key (exactly 0)."""
    import longattn
    S, j = 600, 300
    q = torch.randn(2, S, 4, 64).half().to(device)
    k, v = (torch.randn(2, S, 2, 64).half().to(device) for _ in range(2))  # kv head 0 serves query heads 0, 1
    v[0, j, 0, 5] = float("nan")
    v[0, j + 1, 0, 7] = float("inf")
    for window in (None, (16, 16)):
        out = (longattn.attention(q, k, v, causal=True) if window is None
               else longattn.sliding_window_attention(q, k, v, window=window)).cpu()
        lo, hi = (j, S - 1) if window is None else (j - window[1], j + 1 + window[0])  # the rows that see j or j + 1
        assert not torch.isfinite(out[0, lo:hi + 1, :2]).all(dim=-1).any()  # they see it: IEEE says non-finite
        assert torch.isfinite(out[1]).all() and torch.isfinite(out[0, :, 2:]).all()
        assert torch.isfinite(out[0, :max(0, lo - 128), :2]).all()
        assert torch.isfinite(out[0, hi + 129:, :2]).all()
    # rows that see no key, in a tile that meets the Inf: exactly 0
    q2 = torch.randn(1, 64, 1, 64).half().to(device)
    k2, v2 = (torch.randn(1, 32, 1, 64).half().to(device) for _ in range(2))
    v2[0, 0, 0, 0] = float("inf")
    out = longattn.attention(q2, k2, v2, causal=True).cpu()  # Sq > Sk: the first 32 rows see nothing
    assert (out[0, :32] == 0).all()
