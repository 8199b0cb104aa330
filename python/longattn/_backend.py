"""Which backend serves a call: "cpu", "cuda", or "cuda_emulator" (CPU tensors inside longattn.testing.cuda_emulator(),
served by the CUDA backend on the CPU emulator). Also the output poisoning tests use to catch unwritten elements."""

from __future__ import annotations

import threading

import torch

_lock = threading.Lock()
_emulation_depth = 0  # > 0 inside cuda_emulator(): process-wide, like a device
_poison_depth = 0     # > 0: outputs are allocated filled with NaN instead of left uninitialised


def of(t: torch.Tensor) -> str:
    device = t.device.type
    if device == "cpu" and _emulation_depth > 0:
        return "cuda_emulator"
    return device


def is_cuda_like(backend: str) -> bool:
    return backend in ("cuda", "cuda_emulator")


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison_depth > 0 and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out
