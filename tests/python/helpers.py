"""Shared checks: longattn is held to the error plain PyTorch makes doing the same math in the same dtype."""

import torch

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


def bshd(b, s, h, d, dtype=torch.float32, layout="bshd"):
    """A (b, s, h, d) tensor; layout 'bhsd' gives a transposed (non-contiguous) view, as from a (B, H, S, D) model."""
    if layout == "bhsd":
        return torch.randn(b, h, s, d).to(dtype).transpose(1, 2)
    return torch.randn(b, s, h, d).to(dtype)
