"""What a new user tripped over: oversized options, seeds, environment variables, the main job's arguments, meta
tensors, CUDA requests without a GPU, gradients under torch.compile. Each gives a clear error or a warning that says
what is used instead."""

import os
import subprocess
import sys

import pytest
import torch

import longattn
from longattn import _C


def qkv(S=16, H=2, D=8):
    return torch.randn(1, S, H, D), torch.randn(1, S, H, D), torch.randn(1, S, H, D)


@pytest.mark.parametrize("window,match", [((2**63, 0), "window"), ((0, 2**40), "window"), ((2**31, 0), "window")])
def test_window_bounds_beyond_int32_are_a_value_error(window, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        longattn.sliding_window_attention(q, k, v, window=window)
    assert longattn.sliding_window_attention(q, k, v, window=(2**31 - 1, 0)).shape == q.shape   # the largest


@pytest.mark.parametrize("dilation", [2**63, 2**31, [1, 2**63]])
def test_huge_dilation_is_a_value_error(dilation):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dilation"):
        longattn.sliding_window_attention(q, k, v, window=(2, 2), dilation=dilation)


@pytest.mark.parametrize("seed", [-1, 2**64, -(2**63)])
def test_seed_outside_0_to_2_64_is_a_value_error(seed):
    qk, v = torch.randn(1, 32, 2, 8), torch.randn(1, 32, 2, 8)
    with pytest.raises(ValueError, match=r"seed: got .*0 to 2\^64 - 1"):
        longattn.lsh_attention(qk, v, n_hashes=1, n_buckets=4, chunk_length=8, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        longattn.lsh_rotations(2, 8, 1, 4, seed=seed)


def test_seeds_at_the_ends_of_the_range_work():
    qk, v = torch.randn(1, 32, 2, 8), torch.randn(1, 32, 2, 8)
    for seed in (0, 2**63, 2**64 - 1):
        a = longattn.lsh_attention(qk, v, n_hashes=1, n_buckets=4, chunk_length=8, seed=seed)
        b = longattn.lsh_attention(qk, v, n_hashes=1, n_buckets=4, chunk_length=8,
                                   rotations=longattn.lsh_rotations(2, 8, 1, 4, seed=seed))
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_scale_and_softcap_beyond_float32_are_named(value):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"scale: got .*float32"):
        longattn.attention(q, k, v, scale=value)
    if value > 0:
        with pytest.raises(ValueError, match=r"softcap: got .*float32"):
            longattn.attention(q, k, v, softcap=value)


def test_lsh_sizes_that_imply_huge_allocations_are_refused_up_front():
    qk, v = torch.randn(1, 64, 8, 64), torch.randn(1, 64, 8, 64)
    with pytest.raises(ValueError, match=r"n_buckets: .* GiB of rotations"):
        longattn.lsh_attention(qk, v, n_hashes=4, n_buckets=2**24, chunk_length=16, seed=0)
    with pytest.raises(ValueError, match="GiB of rotations"):
        longattn.lsh_rotations(8, 64, 4, 2**24)


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LONGATTN_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=True)


ISA_CASES = ["AVX2", "avx1024", "avx2 "]


@pytest.mark.parametrize("value", ISA_CASES)
def test_unusable_cpu_isa_variable_warns_once_and_says_what_is_used(value):
    run = run_python("import longattn, warnings; print(longattn.capabilities()['cpu_isa_active'])",
                     LONGATTN_CPU_ISA=value)
    best = _C.best_cpu_isa()
    assert run.stdout.strip() == best
    assert run.stderr.count("RuntimeWarning") == 1, run.stderr
    assert f"LONGATTN_CPU_ISA='{value}'" in run.stderr and f"using {best}" in run.stderr


def test_cpu_isa_this_cpu_cannot_run_warns():
    missing = [isa for isa in ("avx2", "avx512", "avx512_bf16") if not _C.cpu_isa_supported(isa)]
    if not missing:
        pytest.skip("this CPU runs every compiled ISA")
    run = run_python("import longattn", LONGATTN_CPU_ISA=missing[-1])
    assert "cannot run it" in run.stderr


def test_valid_variables_give_no_warning():
    run = run_python("import longattn; print(longattn.get_num_threads(), longattn.capabilities()['cpu_isa_active'])",
                     LONGATTN_CPU_ISA="scalar", LONGATTN_NUM_THREADS="3")
    assert run.stdout.split() == ["3", "scalar"] and "Warning" not in run.stderr


def test_empty_variables_are_unset():
    run = run_python("import longattn", LONGATTN_CPU_ISA="", LONGATTN_NUM_THREADS="")
    assert "Warning" not in run.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-1", "99999", "2.5"])
def test_unusable_thread_count_variable_warns(value):
    run = run_python("import longattn; print(longattn.get_num_threads())", LONGATTN_NUM_THREADS=value)
    assert int(run.stdout) == len(os.sched_getaffinity(0))
    assert run.stderr.count("RuntimeWarning") == 1
    assert f"LONGATTN_NUM_THREADS='{value}'" in run.stderr and "is not an integer from 1 to 1024" in run.stderr


def test_report_shows_the_warning_instead_of_echoing_the_value():
    run = subprocess.run([sys.executable, "-m", "longattn", "--no-bench"], capture_output=True, text=True,
                         env={**os.environ, "LONGATTN_NUM_THREADS": "abc"}, check=True)
    assert "warning" in run.stdout and "is not an integer from 1 to 1024" in run.stdout


@pytest.mark.parametrize("args", [["--reps", "0"], ["--seqlens", "-5"], ["--seqlens", "0"], ["--reps", "x"],
                                  ["--window-seqlens", "0"]])
def test_main_job_rejects_bad_arguments(args):
    run = subprocess.run([sys.executable, "-m", "longattn", *args], capture_output=True, text=True)
    assert run.returncode == 2 and "expected a positive integer" in run.stderr
    assert "Traceback" not in run.stderr


def test_main_job_help_describes_every_option():
    run = subprocess.run([sys.executable, "-m", "longattn", "--help"], capture_output=True, text=True, check=True)
    for option, words in (("--seqlens", "dense benchmark"), ("--window-seqlens", "sliding-window"),
                          ("--reps", "repetitions"), ("--no-bench", "capability report")):
        assert option in run.stdout and words in run.stdout


def test_meta_tensors_give_shapes():
    q, k, v = (torch.empty(2, 40, 4, 32, device="meta"), torch.empty(2, 50, 2, 32, device="meta"),
               torch.empty(2, 50, 2, 16, device="meta"))
    out, lse = longattn.attention(q, k, v, causal=True, return_lse=True)
    assert out.device.type == "meta" and out.shape == (2, 40, 4, 16) and lse.shape == (2, 4, 40)
    out = longattn.sliding_window_attention(q, k, v, window=(4, 4))
    assert out.shape == (2, 40, 4, 16)
    cu = torch.tensor([0, 10, 40], dtype=torch.int32, device="meta")
    out = longattn.varlen_attention(q[0], k[0, :40], v[0, :40], cu, cu)
    assert out.shape == (40, 4, 16)
    kc, vc = torch.empty(2, 64, 2, 32, device="meta"), torch.empty(2, 64, 2, 16, device="meta")
    out = longattn.attention_with_kvcache(q[:, :1], kc, vc, cache_seqlens=7)
    assert out.shape == (2, 1, 4, 16)
    qk = torch.empty(1, 64, 2, 16, device="meta")
    out, b = longattn.lsh_attention(qk, qk, n_hashes=2, n_buckets=4, chunk_length=16, seed=0, return_buckets=True)
    assert out.shape == (1, 64, 2, 16) and b.shape == (1, 2, 2, 64) and b.device.type == "meta"


@pytest.mark.skipif(not _C.cuda_kernels_built or torch.cuda.is_available(),
                    reason="needs a build with CUDA kernels on a machine without a usable GPU")
def test_cuda_request_without_a_gpu_is_unsupported_not_internal():
    """Through the C++ core directly (torch cannot make CUDA tensors here): the status is "unsupported" (a
    ValueError naming the device), with the reason, not "a bug in longattn" (RuntimeError)."""
    q = torch.randn(1, 8, 2, 64, dtype=torch.float16)
    out = torch.empty_like(q)
    strides = (q.stride(0), q.stride(1), q.stride(2))
    args = [q.data_ptr(), q.data_ptr(), q.data_ptr(), out.data_ptr(), 0, "float16", "cuda", (1, 8, 8, 2, 2, 64, 64),
            strides, strides, strides, strides, (0, 0), 0.125, False, -1, -1, [], 0, (0, 0), 0, 0, 0, -1, 0.0, 0, 0,
            (0, 0), (0, 0, 0, 0), (0,) * 9, (0, 0, 0), (0, 0, 0)]
    with pytest.raises(ValueError, match="no usable CUDA device"):
        _C.attention_forward(*args)


def test_gradients_under_torch_compile_say_so_first():
    torch._dynamo.reset()
    q = torch.randn(1, 16, 2, 8, requires_grad=True)
    k, v = torch.randn(1, 16, 2, 8), torch.randn(1, 16, 2, 8)
    compiled = torch.compile(lambda q, k, v: longattn.attention(q, k, v) * 2)
    with pytest.raises(NotImplementedError) as info:
        compiled(q, k, v)
    assert str(info.value).startswith("longattn has no backward pass yet"), str(info.value)[:300]


def test_cold_start_loads_no_compiler_stack_and_prints_nothing():
    """The first call of every operation goes straight to the kernel: registering the operators through
    torch.library's low-level API keeps torch._dynamo (about a second and ~70 MB on first use) out of the process."""
    code = """
import sys, torch
import longattn
q = torch.randn(1, 64, 2, 16)
longattn.attention(q, q, q, causal=True)
longattn.sliding_window_attention(q, q, q, window=(4, 4))
cu = torch.tensor([0, 20, 64], dtype=torch.int32)
longattn.varlen_attention(q[0], q[0], q[0], cu, cu)
longattn.attention_with_kvcache(q[:, :1], q.clone(), q.clone(), cache_seqlens=torch.tensor([30], dtype=torch.int32))
longattn.lsh_attention(q, q, n_hashes=2, n_buckets=4, chunk_length=16, seed=0)
loaded = sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules)
print(",".join(loaded) or "none")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGATTN_")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.strip() == "none", f"loaded at the first calls: {run.stdout.strip()}"
    assert run.stderr == "", f"printed: {run.stderr!r}"
