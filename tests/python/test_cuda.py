"""The CUDA kernels (SPEC §1, §2 on a GPU) against the float64 oracle and torch SDPA; CUDA graphs, streams, compile.

Skipped cleanly on machines without a CUDA GPU (compute capability >= 8.0) or without a CUDA build of longattn.
"""

import pytest
import torch

import longattn
from longattn import reference

from helpers import assert_matches_oracle


def _usable() -> bool:
    if not (torch.cuda.is_available() and longattn.capabilities()["cuda_kernels_built"]):
        return False
    return torch.cuda.get_device_capability()[0] >= 8


pytestmark = pytest.mark.skipif(not _usable(), reason="needs a CUDA GPU with compute capability >= 8.0 and a "
                                                      "CUDA build of longattn")

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HEAD_DIMS = [32, 64, 96, 128, 256]


def cuda_bshd(b, s, h, d, dtype):
    return torch.randn(b, s, h, d, device="cuda").to(dtype)


def check(q, k, v, window=None, **kw):
    """longattn on the GPU vs the float64 oracle (on the CPU), held to 2x PyTorch's own error in that dtype."""
    if window is None:
        out, lse = longattn.attention(q, k, v, return_lse=True, **kw)
        ref = reference.attention(q.cpu(), k.cpu(), v.cpu(), **kw)
        same = reference.attention(q, k, v, compute_dtype=q.dtype, **kw)
    else:
        out, lse = longattn.sliding_window_attention(q, k, v, window=window, return_lse=True, **kw)
        ref = reference.sliding_window_attention(q.cpu(), k.cpu(), v.cpu(), window=window,
                                                 **{a: (b.cpu() if torch.is_tensor(b) else b) for a, b in kw.items()})
        same = reference.sliding_window_attention(q, k, v, window=window, compute_dtype=q.dtype, **kw)
    assert out.device == q.device and out.dtype == q.dtype and out.is_contiguous()
    assert_matches_oracle(out.cpu(), ref[0], same[0].cpu(), "out")
    assert_matches_oracle(lse.cpu(), ref[1], same[1].float().cpu(), "lse")
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_and_causal(dtype, head_dim, causal):
    q, k, v = (cuda_bshd(2, 200, 4, head_dim, dtype) for _ in range(3))
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 300), (300, 1), (65, 64), (64, 65), (130, 513), (513, 130)])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (8, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths_and_gqa(sq, sk, heads, causal):
    q = cuda_bshd(1, sq, heads[0], 64, torch.float16)
    k, v = (cuda_bshd(1, sk, heads[1], 64, torch.float16) for _ in range(2))
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_against_sdpa(dtype):
    q, k, v = (cuda_bshd(2, 1024, 8, 128, dtype) for _ in range(3))
    for causal in (False, True):
        want = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal).transpose(1, 2)
        torch.testing.assert_close(longattn.attention(q, k, v, causal=causal), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("window", [(0, 0), (16, 16), (63, 64), (100, 7), (-1, 9), (9, -1), (256, 256)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_windows(window, dtype):
    q, k, v = (cuda_bshd(1, 700, 4, 64, dtype) for _ in range(3))
    check(q, k, v, window=window)


@pytest.mark.parametrize("dilation", [2, 3, [1, 2, 3, 4]])
@pytest.mark.parametrize("window,causal", [((4, 4), False), ((10, 0), True)])
def test_dilation(dilation, window, causal):
    q, k, v = (cuda_bshd(1, 333, 4, 64, torch.bfloat16) for _ in range(3))
    check(q, k, v, window=window, causal=causal, dilation=dilation)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_tokens(dtype):
    q, k, v = (cuda_bshd(2, 520, 4, 64, dtype) for _ in range(3))
    g = torch.zeros(2, 520, dtype=torch.bool, device="cuda")
    g[0, [0, 77, 519]] = True
    g[1, 200:330] = True
    check(q, k, v, window=(32, 32), global_tokens=g)


def test_empty_rows_and_strided_inputs():
    q = torch.randn(1, 4, 50, 64, device="cuda", dtype=torch.float16).transpose(1, 2)  # a (B, H, S, D) model
    k, v = (cuda_bshd(1, 10, 4, 64, torch.float16) for _ in range(2))
    out, lse = check(q, k, v, window=(2, 0))
    assert (out[:, :40] == 0).all() and torch.isneginf(lse[:, :, :40]).all()


def test_cuda_graph_capture_and_replay():
    q, k, v = (cuda_bshd(1, 512, 8, 64, torch.float16) for _ in range(3))
    g = torch.zeros(1, 512, dtype=torch.bool, device="cuda")
    g[0, 3] = True
    f = lambda: longattn.sliding_window_attention(q, k, v, window=(64, 64), global_tokens=g)  # noqa: E731
    want = f()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        f()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = f()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, want)


def test_runs_on_the_current_non_default_stream():
    q, k, v = (cuda_bshd(2, 1024, 8, 128, torch.bfloat16) for _ in range(3))
    want = longattn.attention(q, k, v, causal=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = longattn.attention(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(got, want)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    q, k, v = (cuda_bshd(1, 256, 4, 64, torch.float16) for _ in range(3))
    f = lambda q, k, v: longattn.sliding_window_attention(q, k, v, window=(32, 0)) * 2  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v), atol=0, rtol=0)


def test_deterministic():
    q, k, v = (cuda_bshd(2, 777, 8, 64, torch.bfloat16) for _ in range(3))
    assert torch.equal(longattn.attention(q, k, v), longattn.attention(q, k, v))


def test_unsupported_combinations_are_refused_with_the_supported_list():
    q = cuda_bshd(1, 16, 2, 40, torch.float16)
    with pytest.raises(ValueError, match=r"head_dim: got head_dim=40.*supported: head_dim == head_dim_v in"):
        longattn.attention(q, q, q)
