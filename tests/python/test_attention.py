"""longattn.attention (docs/semantics.md) against the float64 oracle, PyTorch SDPA, and the error rules."""

import concurrent.futures
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import longattn
from longattn import reference

from helpers import assert_matches_oracle, assert_nan_in_v_rule, bshd

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_against_oracle(q, k, v, causal=False, scale=None):
    out, lse = longattn.attention(q, k, v, causal=causal, scale=scale, return_lse=True)
    ref_out, ref_lse = reference.attention(q, k, v, causal=causal, scale=scale)
    pt_out, pt_lse = reference.attention(q, k, v, causal=causal, scale=scale, compute_dtype=q.dtype)
    assert out.dtype == q.dtype and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert_matches_oracle(out, ref_out, pt_out, "out")
    assert_matches_oracle(lse, ref_lse, pt_lse.float(), "lse")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [1, 7, 32, 64, 80, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims_and_dtypes(dtype, head_dim, causal):
    q, k, v = bshd(2, 150, 4, head_dim, dtype), bshd(2, 150, 2, head_dim, dtype), bshd(2, 150, 2, head_dim, dtype)
    check_against_oracle(q, k, v, causal)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 300), (300, 1), (17, 33), (128, 128), (300, 77), (77, 300),
                                   (513, 1100), (1100, 513), (65, 64), (64, 65)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_sequence_lengths_and_gqa(cpu_isa, sq, sk, causal, heads):
    hq, hk = heads
    q, k, v = bshd(1, sq, hq, 64), bshd(1, sk, hk, 64), bshd(1, sk, hk, 48)
    check_against_oracle(q, k, v, causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_cpu_path(cpu_isa, dtype):
    q, k, v = bshd(2, 200, 4, 72, dtype), bshd(2, 333, 2, 72, dtype), bshd(2, 333, 2, 40, dtype)
    check_against_oracle(q, k, v, causal=True)
    check_against_oracle(q, k, v, causal=False, scale=0.3)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_against_torch_sdpa(causal, dtype):
    # With Sq == Sk, SDPA's top-left causal mask equals our bottom-right one.
    B, S, H, D = 2, 257, 8, 64
    q, k, v = (torch.randn(B, H, S, D).to(dtype) for _ in range(3))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal).to(dtype)
    got = longattn.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
    ref, _ = reference.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
    assert_matches_oracle(got, ref, expected.transpose(1, 2), "out vs SDPA-error")
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=tol, rtol=tol)


def test_gqa_against_sdpa_enable_gqa():
    q, k, v = torch.randn(1, 8, 300, 64), torch.randn(1, 2, 300, 64), torch.randn(1, 2, 300, 64)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    got = longattn.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_strided_views():
    base = torch.randn(2, 6, 200, 64)
    q = base[:, :4].transpose(1, 2)                       # (2, 200, 4, 64), non-contiguous
    k = torch.randn(2, 300, 2, 128)[..., :64]             # row stride 128, head stride 128
    v = torch.randn(2, 2, 300, 32).transpose(1, 2)        # (B, H, S, D) memory
    check_against_oracle(q, k, v, causal=True)
    # broadcast k/v over heads with a zero head stride
    k1 = torch.randn(2, 300, 1, 64).expand(2, 300, 4, 64)
    v1 = torch.randn(2, 300, 1, 32).expand(2, 300, 4, 32)
    check_against_oracle(q, k1, v1)
    # a non-unit last stride is copied once and still correct
    q2 = torch.randn(2, 200, 4, 128)[..., ::2]
    check_against_oracle(q2, k, v)
    # storage offsets
    q3 = torch.randn(2, 201, 4, 64)[:, 1:]
    check_against_oracle(q3, k, v)


def test_empty_tensors():
    for shape_q, shape_k in [((0, 5, 2, 8), (0, 7, 2, 8)), ((2, 0, 2, 8), (2, 7, 2, 8))]:
        q, k = torch.randn(*shape_q), torch.randn(*shape_k)
        out, lse = longattn.attention(q, k, k, return_lse=True)
        assert out.shape == shape_q and lse.shape == (shape_q[0], shape_q[2], shape_q[1])
    q, k = torch.randn(2, 5, 2, 8), torch.randn(2, 0, 2, 8)  # Sk = 0: every row empty
    out, lse = longattn.attention(q, k, k, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_empty_rows_give_zero_and_minus_inf():
    q, k, v = torch.randn(1, 50, 2, 16), torch.randn(1, 20, 2, 16), torch.randn(1, 20, 2, 16)
    out, lse = longattn.attention(q, k, v, causal=True, return_lse=True)
    # bottom-right alignment: query i sees key j iff j <= i - 30, so queries 0..29 see nothing
    assert torch.equal(out[:, :30], torch.zeros_like(out[:, :30]))
    assert torch.isneginf(lse[:, :, :30]).all() and torch.isfinite(lse[:, :, 30:]).all()
    assert not torch.isnan(out).any()
    check_against_oracle(q, k, v, causal=True)


def test_nan_stays_in_its_row():
    q, k, v = torch.randn(2, 100, 2, 32), torch.randn(2, 100, 2, 32), torch.randn(2, 100, 2, 32)
    q[0, 7, 1, 3] = float("nan")
    out = longattn.attention(q, k, v)
    assert torch.isnan(out[0, 7, 1]).all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 7, 1] = False
    assert not torch.isnan(out[mask]).any()
    # An inf in a key gives +inf or -inf scores by the sign of q: +inf rows become NaN (inf - inf), -inf scores
    # just drop that key. Exactly the IEEE outcome of the float64 oracle, and only in batch 1, kv head 0.
    k[1, 5, 0, 0] = float("inf")
    out = longattn.attention(q, k, v)
    ref, _ = reference.attention(q, k, v)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[1, :, 0]).any() and not torch.isnan(out[1, :, 1]).any()


def test_nan_in_v_stays_within_query_tiles_that_meet_the_key(cpu_isa):
    assert_nan_in_v_rule("cpu")


def test_bitwise_identical_across_thread_counts(cpu_isa):
    q, k, v = bshd(2, 700, 4, 64), bshd(2, 900, 2, 64), bshd(2, 900, 2, 64)
    results = []
    for n in (1, 2, 3, 5):
        longattn.set_num_threads(n)
        assert longattn.get_num_threads() == n
        results.append(longattn.attention(q, k, v, causal=True, return_lse=True))
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


def test_deterministic_run_to_run():
    q, k, v = bshd(1, 500, 4, 64, torch.bfloat16), bshd(1, 500, 4, 64, torch.bfloat16), bshd(1, 500, 4, 64,
                                                                                             torch.bfloat16)
    a, b = longattn.attention(q, k, v), longattn.attention(q, k, v)
    assert torch.equal(a, b)


def test_concurrent_calls_from_python_threads():
    inputs = [(bshd(1, 300 + 37 * i, 4, 64), bshd(1, 400, 2, 64), bshd(1, 400, 2, 64)) for i in range(8)]
    serial = [longattn.attention(q, k, v, causal=i % 2 == 0) for i, (q, k, v) in enumerate(inputs)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            futures = [pool.submit(longattn.attention, q, k, v, causal=i % 2 == 0)
                       for i, (q, k, v) in enumerate(inputs)]
            for fut, expected in zip(futures, serial):
                assert torch.equal(fut.result(), expected)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(q, k, v):
        return longattn.attention(q, k, v, causal=True) * 2.0

    q, k, v = bshd(1, 130, 4, 32), bshd(1, 130, 2, 32), bshd(1, 130, 2, 32)
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v), atol=0, rtol=0)
    q2 = bshd(1, 190, 4, 32)  # a new shape recompiles or runs dynamically, without graph breaks
    torch.testing.assert_close(compiled(q2, k, v), f(q2, k, v), atol=0, rtol=0)


def test_custom_op_passes_opcheck():
    q, k, v = bshd(1, 70, 4, 32), bshd(1, 90, 2, 32), bshd(1, 90, 2, 16)
    torch.library.opcheck(torch.ops.longattn.attention_fwd.default,
                          (q, k, v, 0.2, True, -1, -1, [], None, True, 0.0, None, None),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_autograd_is_refused_not_ignored():
    q = torch.randn(1, 10, 2, 8, requires_grad=True)
    k, v = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
    with pytest.raises(NotImplementedError, match="backward"):
        longattn.attention(q, k, v)
    with torch.no_grad():
        longattn.attention(q, k, v)
    with torch.inference_mode():
        longattn.attention(q, k, v)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = bshd(1, 40, 2, 50), bshd(1, 40, 2, 50), bshd(1, 40, 2, 50)
    torch.testing.assert_close(longattn.attention(q, k, v), longattn.attention(q, k, v, scale=1 / math.sqrt(50)),
                               atol=0, rtol=0)


# ---- bad input: every error names the argument, the value and what is accepted ---------------------------------------
def good():
    return torch.randn(1, 8, 4, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)


@pytest.mark.parametrize("mutate,exc,pattern", [
    (lambda q, k, v: (q[0], k, v), ValueError, r"q: expected a 4-D tensor .* got shape \(8, 4, 16\)"),
    (lambda q, k, v: (q, k[None], v), ValueError, r"k: expected a 4-D tensor"),
    (lambda q, k, v: (q, k, v.double()), ValueError, r"v: dtype torch.float64 is not supported; expected"),
    (lambda q, k, v: (q.int(), k, v), ValueError, r"q: dtype torch.int32 is not supported"),
    (lambda q, k, v: (q.half(), k, v), ValueError, r"q, k, v: expected one dtype, got q torch.float16"),
    (lambda q, k, v: (q, k.expand(2, 8, 2, 16), v), ValueError, r"batch: q, k, v must share dim 0"),
    (lambda q, k, v: (q, k[:, :5], v), ValueError, r"k, v: expected the same sequence length"),
    (lambda q, k, v: (q, k, v[:, :, :1]), ValueError, r"k, v: expected the same number of heads"),
    (lambda q, k, v: (q[:, :, :3], k, v), ValueError, r"heads: q has 3 heads and k, v have 2"),
    (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), ValueError, r"heads: q has 4 heads and k, v have 0"),
    (lambda q, k, v: (q[..., :8], k, v), ValueError, r"head_dim: q and k must share dim 3"),
    (lambda q, k, v: (torch.randn(1, 8, 4, 300), torch.randn(1, 8, 2, 300), v), ValueError,
     r"head_dim: got 300; the CPU backend supports head dims 1..256"),
    (lambda q, k, v: (q, k, torch.randn(1, 8, 2, 257)), ValueError, r"head_dim of v: got 257"),
    (lambda q, k, v: (q[..., :0], k[..., :0], v), ValueError, r"head_dim: got 0"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, r"q: expected a torch.Tensor, got ndarray"),
    (lambda q, k, v: (q, None, v), TypeError, r"k: expected a torch.Tensor, got NoneType"),
    (lambda q, k, v: (q.to("meta"), k, v), ValueError, r"q, k, v: expected one device"),
])
def test_bad_tensors(mutate, exc, pattern):
    with pytest.raises(exc, match=pattern):
        longattn.attention(*mutate(*good()))


@pytest.mark.parametrize("kwargs,exc,pattern", [
    ({"causal": 1}, TypeError, r"causal: expected a bool, got 1"),
    ({"causal": "yes"}, TypeError, r"causal: expected a bool"),
    ({"return_lse": None}, TypeError, r"return_lse: expected a bool"),
    ({"scale": float("nan")}, ValueError, r"scale: got nan, expected a finite number"),
    ({"scale": float("inf")}, ValueError, r"scale: got inf"),
    ({"scale": "0.1"}, TypeError, r"scale: expected None or a real number, got '0.1'"),
    ({"scale": True}, TypeError, r"scale: expected None or a real number, got True"),
])
def test_bad_options(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        longattn.attention(*good(), **kwargs)


def test_cuda_tensors_get_a_clear_error():
    # Fake CUDA tensors reach the validation without needing a GPU.
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q = torch.empty(1, 8, 4, 16, device="cuda")
        if not longattn.capabilities()["cuda_kernels_built"]:
            with pytest.raises(ValueError, match="device: got a CUDA tensor, but this longattn build has no CUDA"):
                longattn.attention(q, q, q)
            return
        # what the CUDA kernels do not serve is refused with the list of what they do, never run slowly instead
        for dtype, d, dv in [(torch.float16, 48, 48), (torch.bfloat16, 64, 32), (torch.float16, 512, 512)]:
            q = torch.empty(1, 8, 4, d, device="cuda", dtype=dtype)
            v = torch.empty(1, 8, 4, dv, device="cuda", dtype=dtype)
            for call in (lambda: longattn.attention(q, q, v),
                         lambda: longattn.lsh_attention(q, v, n_hashes=1, n_buckets=4, chunk_length=4)):
                with pytest.raises(ValueError, match=r"head_dim: got head_dim=.* supported: head_dim == head_dim_v "
                                                     r"in \(32, 64, 96, 128, 256\)"):
                    call()


def test_threads_api():
    with pytest.raises(ValueError, match=r"n: got 0, expected 1..1024"):
        longattn.set_num_threads(0)
    with pytest.raises(TypeError, match=r"n: expected an int"):
        longattn.set_num_threads(2.0)
    longattn.set_num_threads(3)
    assert longattn.get_num_threads() == 3


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_environment_overrides():
    assert run_python("import longattn; print(longattn.get_num_threads())", LONGATTN_NUM_THREADS="3") == "3"
    assert run_python("import longattn._C as c; print(c.cpu_isa())", LONGATTN_CPU_ISA="scalar") == "scalar"


def test_scalar_path_selected_by_environment_is_correct():
    code = ("import torch, longattn; from longattn import reference, _C; torch.manual_seed(1);"
            "q=torch.randn(1,99,2,24); k=torch.randn(1,120,1,24); v=torch.randn(1,120,1,24);"
            "o=longattn.attention(q,k,v,causal=True); r,_=reference.attention(q,k,v,causal=True);"
            "print(_C.cpu_isa(), float((o.double()-r).abs().max()) < 1e-5)")
    assert run_python(code, LONGATTN_CPU_ISA="scalar") == "scalar True"


def test_capabilities_report():
    caps = longattn.capabilities()
    assert caps["cpu_isa_active"] in caps["cpu_isa_compiled"] and "scalar" in caps["cpu_isa_compiled"]
    assert caps["threads"] >= 1 and isinstance(caps["cuda_kernels_built"], bool)
    assert caps["cuda_kernels_built"] == bool(caps["cuda_archs"])


def test_main_job_reports_and_benchmarks():
    out = subprocess.run([sys.executable, "-m", "longattn", "--seqlens", "128", "--window-seqlens", "1024",
                          "--reps", "1"], capture_output=True, text=True, check=True, timeout=300).stdout
    assert "longattn capability report" in out and "CUDA kernels" in out
    assert out.count("CPU flags:") >= 2  # the host's flags in the report and with the benchmark tables
    assert "quick benchmark on cpu" in out and "sliding window (left = right = 256" in out
    rows = [line for line in out.splitlines() if line.rstrip().endswith("x")]  # one per measured case
    assert len(rows) == 4 + 2 and "float32   1024" in out
