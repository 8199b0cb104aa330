"""The CUDA backend (docs/semantics.md) against the float64 oracle and torch SDPA.

Every case runs on a CUDA GPU when there is one (compute capability >= 8.0 and a CUDA build of longattn), and
otherwise on longattn's CUDA emulator (longattn.testing.cuda_emulator: the same host dispatch and kernel sources on
the CPU, with its memory checker on), so CI always runs the CUDA kernels. Outputs are allocated filled with NaN, so a
row a kernel never writes fails the comparison.
"""

import random
import threading

import pytest
import torch

import longattn
from longattn import reference, testing

from helpers import assert_matches_oracle, assert_nan_in_v_rule


def _gpu_usable() -> bool:
    if not (torch.cuda.is_available() and longattn.capabilities()["cuda_kernels_built"]):
        return False
    return torch.cuda.get_device_capability()[0] >= 8


GPU = _gpu_usable()
EMULATOR = testing.emulator_available()
pytestmark = pytest.mark.skipif(not (GPU or EMULATOR), reason="needs a CUDA GPU (compute capability >= 8.0 with a "
                                                              "CUDA build of longattn) or a build with the emulator")
gpu_only = pytest.mark.skipif(not GPU, reason="needs a real GPU (streams, CUDA graphs)")
emulator_only = pytest.mark.skipif(GPU or not EMULATOR, reason="a property of the emulator (a GPU is present)")


@pytest.fixture
def dev():
    """The device the CUDA backend serves: 'cuda', or 'cpu' inside the emulator."""
    if GPU:
        with testing.poisoned_outputs():
            yield torch.device("cuda")
    else:
        with testing.cuda_emulator():
            yield torch.device("cpu")


def rand(b, s, h, d, dtype, dev):
    return torch.randn(b, s, h, d).to(dtype).to(dev)


def check(q, k, v, window=None, **kw):
    """longattn's CUDA backend vs the float64 oracle, held to 2x PyTorch's own error in that dtype."""
    cpu_kw = {a: (b.cpu() if torch.is_tensor(b) else b) for a, b in kw.items()}
    if window is None:
        out, lse = longattn.attention(q, k, v, return_lse=True, **kw)
        ref = reference.attention(q.cpu(), k.cpu(), v.cpu(), **cpu_kw)
        same = reference.attention(q.cpu(), k.cpu(), v.cpu(), compute_dtype=q.dtype, **cpu_kw)
    else:
        out, lse = longattn.sliding_window_attention(q, k, v, window=window, return_lse=True, **kw)
        ref = reference.sliding_window_attention(q.cpu(), k.cpu(), v.cpu(), window=window, **cpu_kw)
        same = reference.sliding_window_attention(q.cpu(), k.cpu(), v.cpu(), window=window, compute_dtype=q.dtype,
                                                  **cpu_kw)
    assert out.device == q.device and out.dtype == q.dtype and out.is_contiguous()
    assert_matches_oracle(out.cpu(), ref[0], same[0].cpu(), "out")
    assert_matches_oracle(lse.cpu(), ref[1], same[1].float().cpu(), "lse")
    return out, lse


TC_DTYPES = [torch.float16, torch.bfloat16]
HEAD_DIMS = [32, 64, 96, 128, 256]


@pytest.mark.parametrize("dtype", TC_DTYPES + [torch.float32])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_dtypes_head_dims_causal(dev, dtype, head_dim, causal):
    q = rand(2, 100, 2, head_dim, dtype, dev)
    k, v = (rand(2, 100, 1, head_dim, dtype, dev) for _ in range(2))
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("head_dims", [(1, 1), (40, 40), (129, 7), (256, 33)])
def test_float32_odd_head_dims(dev, head_dims):
    d, dv = head_dims
    q, k = rand(1, 70, 2, d, torch.float32, dev), rand(1, 90, 2, d, torch.float32, dev)
    check(q, k, rand(1, 90, 2, dv, torch.float32, dev), causal=True)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 300), (300, 1), (65, 64), (64, 65), (130, 513), (513, 130)])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths_and_gqa(dev, sq, sk, heads, causal):
    q = rand(1, sq, heads[0], 64, torch.float16, dev)
    k, v = (rand(1, sk, heads[1], 64, torch.float16, dev) for _ in range(2))
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", TC_DTYPES)
def test_against_sdpa(dev, dtype):
    S = 1024 if GPU else 256
    q, k, v = (rand(2, S, 4, 128, dtype, dev) for _ in range(3))
    for causal in (False, True):
        want = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
            is_causal=causal).transpose(1, 2)
        torch.testing.assert_close(longattn.attention(q, k, v, causal=causal).float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("window", [(0, 0), (16, 16), (63, 64), (100, 7), (-1, 9), (9, -1), (256, 256)])
@pytest.mark.parametrize("dtype", TC_DTYPES + [torch.float32])
def test_windows(dev, window, dtype):
    q, k, v = (rand(1, 700, 2, 64, dtype, dev) for _ in range(3))
    check(q, k, v, window=window)


@pytest.mark.parametrize("sq,sk", [(40, 100), (100, 40), (1, 200)])
@pytest.mark.parametrize("window", [(5, 3), (0, 0), (70, -1)])
def test_windows_bottom_right_when_lengths_differ(dev, sq, sk, window):
    q = rand(1, sq, 2, 32, torch.bfloat16, dev)
    k, v = (rand(1, sk, 2, 32, torch.bfloat16, dev) for _ in range(2))
    check(q, k, v, window=window)


@pytest.mark.parametrize("dilation", [2, 3, [1, 2, 3, 4], 70])
@pytest.mark.parametrize("window,causal", [((4, 4), False), ((10, 0), True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dilation(dev, dilation, window, causal, dtype):
    q, k, v = (rand(1, 333, 4, 64, dtype, dev) for _ in range(3))
    check(q, k, v, window=window, causal=causal, dilation=dilation)


@pytest.mark.parametrize("dtype", TC_DTYPES + [torch.float32])
@pytest.mark.parametrize("window", [(32, 32), (-1, 0)])
def test_global_tokens(dev, dtype, window):
    q = rand(2, 520, 4, 64, dtype, dev)
    k, v = (rand(2, 520, 2, 64, dtype, dev) for _ in range(2))
    g = torch.zeros(2, 520, dtype=torch.bool)
    g[0, [0, 77, 519]] = True
    g[1, 200:330] = True  # more global tokens than a key tile
    check(q, k, v, window=window, global_tokens=g.to(dev))


@pytest.mark.parametrize("sq,sk", [(100, 141), (141, 100)])
def test_dilation_when_lengths_differ(dev, sq, sk):
    # the residue class of query i is that of its key position i + Sk - Sq, not of i
    q = rand(1, sq, 4, 64, torch.float16, dev)
    k, v = (rand(1, sk, 4, 64, torch.float16, dev) for _ in range(2))
    check(q, k, v, window=(4, 4), dilation=[2, 3, 5, 1])


def test_global_tokens_with_dilation(dev):
    q, k, v = (rand(1, 300, 4, 32, torch.float16, dev) for _ in range(3))
    g = torch.zeros(1, 300, dtype=torch.bool)
    g[0, [3, 150, 151]] = True
    check(q, k, v, window=(6, 6), dilation=[1, 2, 5, 9], global_tokens=g.to(dev))


def test_empty_rows_and_strided_inputs(dev):
    q = torch.randn(1, 4, 50, 64).half().to(dev).transpose(1, 2)  # a (B, H, S, D) model's tensor
    k, v = (rand(1, 10, 4, 64, torch.float16, dev) for _ in range(2))
    out, lse = check(q, k, v, window=(2, 0))
    assert (out[:, :40] == 0).all() and torch.isneginf(lse[:, :, :40]).all()


def test_expanded_and_misaligned_views(dev):
    base = torch.randn(1, 96, 4, 66).half().to(dev)
    q = base[..., 1:65]  # the data pointer is 2 bytes past a 16-byte boundary: copied once
    kv = torch.randn(1, 96, 1, 64).half().to(dev).expand(1, 96, 4, 64)  # a zero head stride
    check(q, kv, kv, causal=True)


@pytest.mark.parametrize("shape", [(0, 8, 2, 64), (1, 0, 2, 64)])
def test_empty_tensors_launch_nothing(dev, shape):
    q = torch.randn(shape).half().to(dev)
    testing.emulator_stats(reset=True)
    out = longattn.attention(q, q, q)
    assert out.shape == q.shape
    if not GPU:
        assert testing.emulator_stats()["launches"] == 0


def test_no_keys_gives_zero_and_minus_inf(dev):
    q = rand(1, 5, 2, 64, torch.float16, dev)
    k = rand(1, 0, 2, 64, torch.float16, dev)
    out, lse = longattn.attention(q, k, k, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_random_configurations(dev):
    rng = random.Random(1234)
    for _ in range(24):
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
        D = rng.choice([32, 64, 96, 128, 256] if dtype != torch.float32 else [3, 32, 65, 128])
        Hk = rng.choice([1, 2, 3])
        Hq = Hk * rng.choice([1, 2, 4])
        B, Sq = rng.choice([1, 2]), rng.randint(1, 200)
        Sk = Sq if rng.random() < 0.5 else rng.randint(1, 200)
        q, k, v = rand(B, Sq, Hq, D, dtype, dev), rand(B, Sk, Hk, D, dtype, dev), rand(B, Sk, Hk, D, dtype, dev)
        causal = rng.random() < 0.4
        window = None
        kw = {"causal": causal}
        if rng.random() < 0.6:
            left, right = rng.choice([-1, 0, 3, 17, 70]), (0 if causal else rng.choice([-1, 0, 5, 40]))
            window = (left, right)
            kw["dilation"] = rng.choice([1, 2, [rng.randint(1, 4) for _ in range(Hq)]])
            if Sq == Sk and rng.random() < 0.4:
                g = torch.rand(B, Sk) < 0.05
                kw["global_tokens"] = g.to(dev)
        check(q, k, v, window=window, **kw)


def test_nan_in_v_stays_within_query_tiles_that_meet_the_key(dev):
    assert_nan_in_v_rule(dev)


def test_deterministic(dev):
    q, k, v = (rand(2, 300, 4, 64, torch.bfloat16, dev) for _ in range(3))
    assert torch.equal(longattn.attention(q, k, v), longattn.attention(q, k, v))


def test_concurrent_calls_from_threads_match_serial(dev):
    inputs = [tuple(rand(1, 150, 2, 64, torch.float16, dev) for _ in range(3)) for _ in range(4)]
    want = [longattn.attention(*x, causal=True) for x in inputs]
    got = [None] * 4

    def work(i):
        got[i] = longattn.attention(*inputs[i], causal=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_torch_compile_fullgraph(dev):
    torch._dynamo.reset()
    q, k, v = (rand(1, 128, 2, 64, torch.float16, dev) for _ in range(3))
    f = lambda q, k, v: longattn.sliding_window_attention(q, k, v, window=(32, 0)) * 2  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v), atol=0, rtol=0)


def test_unsupported_combinations_are_refused_with_the_supported_list(dev):
    q = rand(1, 16, 2, 40, torch.float16, dev)
    with pytest.raises(ValueError, match=r"head_dim: got head_dim=40.*supported: head_dim == head_dim_v in"):
        longattn.attention(q, q, q)
    with pytest.raises(ValueError, match=r"head_dim: got head_dim=40.*supported: head_dim == head_dim_v in"):
        longattn.lsh_attention(q, q, n_hashes=1, n_buckets=2, chunk_length=8)


@gpu_only
def test_cuda_graph_capture_and_replay():
    q, k, v = (rand(1, 512, 8, 64, torch.float16, "cuda") for _ in range(3))
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


@gpu_only
def test_runs_on_the_current_non_default_stream():
    q, k, v = (rand(2, 1024, 8, 128, torch.bfloat16, "cuda") for _ in range(3))
    want = longattn.attention(q, k, v, causal=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = longattn.attention(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(got, want)


# ---- properties of the emulator --------------------------------------------------------------------------------------

@emulator_only
def test_shuffled_scheduling_gives_the_same_bits():
    q, k, v = (torch.randn(1, 200, 2, 64).half() for _ in range(3))
    g = torch.zeros(1, 200, dtype=torch.bool)
    g[0, [5, 100]] = True
    with testing.cuda_emulator():
        want = longattn.sliding_window_attention(q, k, v, window=(20, 20), global_tokens=g)
    for seed in (1, 2):
        with testing.cuda_emulator(shuffle=True, seed=seed, workers=2):
            assert torch.equal(longattn.sliding_window_attention(q, k, v, window=(20, 20), global_tokens=g), want)


@emulator_only
def test_outside_the_context_cpu_tensors_use_the_cpu_backend():
    q = torch.randn(1, 16, 2, 40).half()  # head dim 40: CPU yes, CUDA tensor cores no
    longattn.attention(q, q, q)
    with testing.cuda_emulator(), pytest.raises(ValueError, match="head_dim: got head_dim=40"):
        longattn.attention(q, q, q)
    longattn.attention(q, q, q)


@emulator_only
def test_an_old_compute_capability_is_refused_by_the_backend():
    q = torch.randn(1, 16, 2, 64).half()
    with testing.cuda_emulator(compute_capability=75), pytest.raises(ValueError,
                                                                     match="compute capability 7.5 is not supported"):
        longattn.attention(q, q, q)
    with testing.cuda_emulator(compute_capability=90):
        check(q, q, q)


@emulator_only
def test_head_dim_256_fits_an_sm86_block_exactly():
    q, k, v = (torch.randn(1, 70, 1, 256).half() for _ in range(3))
    with testing.cuda_emulator(compute_capability=86):  # 3 x 64 x 264 x 2 bytes = the sm86 opt-in maximum
        check(q, k, v, causal=True)


@emulator_only
def test_emulator_options_are_checked():
    with pytest.raises(ValueError, match=r"compute_capability: got 70, expected one of \(75, 80, 86, 89, 90\)"):
        with testing.cuda_emulator(compute_capability=70):
            pass
    with pytest.raises(TypeError, match="memcheck: expected a bool"):
        with testing.cuda_emulator(memcheck=1):
            pass
    with pytest.raises(ValueError, match="workers: got 99, expected 0..64"):
        with testing.cuda_emulator(workers=99):
            pass


@emulator_only
def test_nested_contexts_restore_the_options():
    with testing.cuda_emulator(compute_capability=90, shuffle=True, seed=3):
        with testing.cuda_emulator(compute_capability=80):
            assert longattn._C.emulator_options()["compute_capability"] == 80
        assert longattn._C.emulator_options()["compute_capability"] == 90
        assert longattn._C.emulator_options()["shuffle"] is True


@emulator_only
def test_the_kernels_run_what_the_stats_say():
    q, k, v = (torch.randn(1, 128, 2, 64).half() for _ in range(3))
    with testing.cuda_emulator():
        testing.emulator_stats(reset=True)
        longattn.attention(q, k, v)
        s = testing.emulator_stats()
    # 2 heads x 2 query tiles, 2 key tiles each; per warp and key tile: 4 x 8 mma for Q·Kᵀ and 4 x 8 for P·V
    assert s["launches"] == 1 and s["blocks"] == 4 and s["threads"] == 4 * 128
    assert s["mma"] == 4 * 2 * 4 * 64
    assert s["checked_accesses"] > 0
