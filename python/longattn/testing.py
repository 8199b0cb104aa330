"""Testing helpers: run the CUDA backend without a GPU.

`cuda_emulator()` is a context manager: inside it, CPU tensors given to longattn's operations are served by the CUDA
backend — the same host-side dispatch (argument checks, alignment copies, workspace, launch configuration) and the
same kernel source files — executed on the CPU by longattn's emulator of the CUDA execution model: blocks, warps of
32 threads as cooperative fibers, shared memory, barriers, warp shuffles and votes, and the PTX instructions the
kernels use (mma.sync, ldmatrix, cp.async). A built-in memory checker (like compute-sanitizer's memcheck, racecheck
and initcheck, for what the kernels touch) turns out-of-bounds or misaligned accesses, shared-memory races, reads of
never-written shared memory and reads of cp.async destinations before their wait into a RuntimeError naming the
kernel, block, thread and access.

Results equal a GPU's up to float32 summation order (exp2f, the tensor cores' own summation order and rounding are
not modelled). It is slow — for tests only.

    with longattn.testing.cuda_emulator():
        out = longattn.attention(q_cpu, k_cpu, v_cpu)   # ran by the CUDA kernels, on the CPU
"""

from __future__ import annotations

import contextlib
import numbers

from . import _C, _backend

_COMPUTE_CAPABILITIES = (75, 80, 86, 89, 90)


def emulator_available() -> bool:
    """Whether this build contains the CUDA emulator (CMake option LONGATTN_CUDA_EMULATOR, on by default)."""
    return bool(_C.emulator_built)


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: got {value}, expected {lo}..{hi}")
    return int(value)


@contextlib.contextmanager
def cuda_emulator(*, compute_capability: int = 80, memcheck: bool = True, shuffle: bool = False, seed: int = 0,
                  workers: int = 0, poison_outputs: bool = True):
    """Serve CPU tensors with the CUDA backend on the CPU emulator (process-wide, nestable).

    compute_capability: the emulated device, one of 75, 80, 86, 89, 90 (limits such as the shared memory per block
        follow it; 75 is below what longattn's kernels need and is refused by the backend, as on such a GPU).
    memcheck: the memory checker (bounds, alignment, races, uninitialised shared reads, cp.async waits). Off is faster.
    shuffle: run blocks in a random order and threads in a random interleaving (from `seed`), to flush out
        assumptions about execution order.
    workers: OS threads running blocks in parallel (0 = the usable cores, at most 8).
    poison_outputs: allocate outputs filled with NaN, so an element a kernel never writes shows up.
    """
    if not emulator_available():
        raise RuntimeError("cuda_emulator: this longattn build has no CUDA emulator (built with "
                           "LONGATTN_CUDA_EMULATOR=OFF)")
    cc = _check_int("compute_capability", compute_capability, 0, 1000)
    if cc not in _COMPUTE_CAPABILITIES:
        raise ValueError(f"compute_capability: got {cc}, expected one of {_COMPUTE_CAPABILITIES}")
    for name, value in (("memcheck", memcheck), ("shuffle", shuffle), ("poison_outputs", poison_outputs)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")
    seed = _check_int("seed", seed, 0, 2**64 - 1)
    workers = _check_int("workers", workers, 0, 64)
    with _backend._lock:
        previous = _C.emulator_options()
        _C.emulator_configure(cc, memcheck, shuffle, seed, workers)
        _backend._emulation_depth += 1
        _backend._poison_depth += int(poison_outputs)
    try:
        yield
    finally:
        with _backend._lock:
            _backend._emulation_depth -= 1
            _backend._poison_depth -= int(poison_outputs)
            _C.emulator_configure(previous["compute_capability"], previous["memcheck"], previous["shuffle"],
                                  previous["seed"], previous["workers"])


@contextlib.contextmanager
def poisoned_outputs():
    """Allocate longattn's outputs filled with NaN (any device), so an element a kernel never writes shows up."""
    with _backend._lock:
        _backend._poison_depth += 1
    try:
        yield
    finally:
        with _backend._lock:
            _backend._poison_depth -= 1


def emulator_stats(reset: bool = False) -> dict:
    """What the emulator executed since the last reset: launches, blocks, threads, barriers, warp collectives,
    mma / ldmatrix / cp.async instructions, checked memory accesses."""
    stats = dict(_C.emulator_stats())
    if reset:
        _C.emulator_reset_stats()
    return stats


def emulator_fragment_layout(name: str) -> list[tuple[int, int, int, int, int]]:
    """The emulator's register fragment layout `name` ("mma.m16n8k16.a" / ".b" / ".c", "ldmatrix.x4",
    "ldmatrix.x4.trans") as (lane, value, row, col, matrix) tuples, for cross-checks against other sources."""
    return [tuple(e) for e in _C.emulator_fragment_layout(name)]
