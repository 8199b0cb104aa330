"""Smoke tests of an installed longattn wheel (scripts/check_wheel.sh runs them in a fresh virtual environment,
from outside the source tree): the package imports from site-packages, every operation runs and agrees with the
float64 oracle shipped inside the package, the CUDA emulator and the kernels compiled into the wheel are there."""

import pathlib
import subprocess
import sys

import pytest
import torch

import longattn
from longattn import reference


def test_imported_from_the_installed_wheel():
    where = pathlib.Path(longattn.__file__).resolve()
    assert "site-packages" in where.parts, f"longattn imported from {where}, not from an installed wheel"
    assert longattn.__version__ == longattn._C.version()


def close(out, ref, tol=2e-5):
    scale = max(1.0, ref.abs().max().item())
    assert (out.double() - ref).abs().max().item() <= tol * scale


def test_each_operation_against_the_oracle():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 70, 4, 32), torch.randn(2, 70, 2, 32), torch.randn(2, 70, 2, 32)
    close(longattn.attention(q, k, v, causal=True), reference.attention(q, k, v, causal=True)[0])
    close(longattn.sliding_window_attention(q, k, v, window=(8, 8)),
          reference.sliding_window_attention(q, k, v, window=(8, 8))[0])
    cu = torch.tensor([0, 30, 70], dtype=torch.int32)
    qp, kp, vp = q[0], k[0], v[0]
    close(longattn.varlen_attention(qp, kp, vp, cu, cu, causal=True),
          reference.varlen_attention(qp, kp, vp, cu, cu, causal=True)[0])
    cache_k, cache_v = torch.randn(2, 80, 2, 32), torch.randn(2, 80, 2, 32)
    lens = torch.tensor([50, 7], dtype=torch.int32)
    q1 = torch.randn(2, 1, 4, 32)
    close(longattn.attention_with_kvcache(q1, cache_k, cache_v, cache_seqlens=lens),
          reference.attention_with_kvcache(q1, cache_k, cache_v, lens)[0])
    qk, vv = torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16)
    out, buckets = longattn.lsh_attention(qk, vv, n_hashes=2, n_buckets=4, chunk_length=16, seed=0,
                                          return_buckets=True)
    close(out, reference.lsh_attention(qk, vv, buckets, chunk_length=16)[0])


def test_capabilities_and_the_cuda_emulator():
    caps = longattn.capabilities()
    assert caps["cpu_isa_active"] in caps["cpu_isa_compiled"]
    print("wheel capabilities:", {k: caps[k] for k in ("cpu_isa_compiled", "cuda_kernels_built", "cuda_archs")})
    if not caps["cuda_emulator_built"]:
        pytest.skip("this wheel was built without the CUDA emulator")
    q = torch.randn(1, 40, 2, 64, dtype=torch.float16)
    with longattn.testing.cuda_emulator():
        out = longattn.attention(q, q, q, causal=True)
    close(out, reference.attention(q, q, q, causal=True)[0], tol=4e-3)


def test_cold_start_prints_nothing():
    # torch itself may warn at import (torch 2.13 without numpy: "Failed to initialize NumPy"); what longattn adds
    # after `import torch` (import + first call) must print nothing
    code = ("import sys, time; import torch; sys.stderr.write('|torch imported|'); sys.stderr.flush(); "
            "t1 = time.perf_counter(); import longattn; q = torch.randn(1, 8, 2, 16); longattn.attention(q, q, q); "
            "t2 = time.perf_counter(); sys.stderr.write(f'{1e3 * (t2 - t1):.0f}')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout == ""
    after_torch = run.stderr.split("|torch imported|", 1)[1]
    assert after_torch.isdigit(), f"longattn printed something: {after_torch!r}"
    try:
        import numpy  # noqa: F401
        numpy_note = "numpy installed"
    except ImportError:
        numpy_note = "no numpy"
    print(f"import longattn + first call: {after_torch} ms beyond import torch ({numpy_note})")


def test_main_job_runs():
    run = subprocess.run([sys.executable, "-m", "longattn", "--seqlens", "256", "--window-seqlens", "512",
                          "--reps", "1"], capture_output=True, text=True, check=True)
    assert "capability report" in run.stdout and "quick benchmark" in run.stdout
