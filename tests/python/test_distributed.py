"""longattn.distributed.attention (context parallelism) on gloo: P = 1, 2, 4 processes on 127.0.0.1, started by the
test, each comparing its shard with the float64 oracle and with one process running the whole sequence
(tests/python/distributed_worker.py). Every wait is bounded: the process group times out after 60 s and the test
kills the ranks after 300 s, so a bug shows up as a failure, never a hung CI."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch

import longattn

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
DIMS = dict(B=2, Hq=4, Hk=2, D=16, Dv=24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world, cases, tmp_path):
    out = tmp_path / "result"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
               LONGATTN_NUM_THREADS="1", LONGATTN_TEST_CASES=json.dumps(cases), LONGATTN_TEST_OUT=str(out))
    procs = [subprocess.Popen([sys.executable, str(WORKER)], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {world} ranks did not finish within 300 s")
    results = {}
    for r in range(world):
        path = pathlib.Path(f"{out}.{r}")
        lines = path.read_text().splitlines() if path.exists() else []
        results[r] = [json.loads(line) for line in lines]
    failures = [f"rank {r}, case {res['case']}:\n{res['error']}" for r, rs in results.items() for res in rs
                if not res["ok"]]
    assert not failures, "\n".join(failures[:3])
    assert all(len(rs) == len(cases) for rs in results.values()), "\n".join(logs)
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return results


def case(name, S, **kw):
    return dict(name=name, S=S, **DIMS, **kw)


# Shard n = S / P; with P = 4 and S = 192: n = 48, zigzag chunks of 24.
RING_CASES = [
    case("dense", 192),
    case("causal", 192, causal=True),
    case("causal zigzag", 192, causal=True, layout="zigzag"),
    case("dense zigzag", 192, layout="zigzag"),
    case("causal, softcap and scale", 192, causal=True, softcap=3.0, scale=0.4),
    case("causal bf16", 192, causal=True, dtype="bfloat16", layout="zigzag"),
    case("dense, dilation dividing the chunk", 192, dilation=2),
    case("causal, per-head dilation", 192, causal=True, dilation=[1, 2, 3, 4], layout="zigzag"),
    case("dense, global tokens", 192, **{"global": [[0, 0], [0, 47], [0, 48], [1, 100], [1, 191]]}),
    case("causal, global tokens", 192, causal=True, layout="zigzag", **{"global": [[0, 5], [0, 120], [1, 23]]}),
]
HALO_CASES = [
    case("window narrower than a shard", 192, window=(5, 3)),
    case("window wider than two shards", 192, window=(110, 70)),
    case("causal window", 192, window=(20, 0), layout="zigzag"),
    case("window, zigzag", 192, window=(9, 13), layout="zigzag"),
    case("window with dilation", 192, window=(6, 4), dilation=3),
    case("window, per-head dilation", 192, window=(7, 7), dilation=[1, 2, 1, 5], layout="zigzag"),
    case("window with global tokens on shard edges", 192, window=(6, 6),
         **{"global": [[0, 47], [0, 48], [0, 96], [1, 0], [1, 191], [1, 150]]}),
    case("causal window with global tokens", 192, window=(16, 0), layout="zigzag", **{"global": [[0, 30], [1, 31]]}),
    case("window, softcap, bf16", 192, window=(12, 12), softcap=5.0, dtype="bfloat16"),
    case("window, query blocks of 8 rows", 192, window=(5, 0), halo_block_rows=8),
    case("window, query blocks of 16 rows, zigzag, dilation", 192, window=(3, 1), dilation=2, layout="zigzag",
         halo_block_rows=5, **{"global": [[0, 40], [1, 41]]}),
    case("one-sided window (all keys to the right)", 192, window=(10, -1)),
    case("dense, dilation not dividing the chunk", 192, dilation=5),
]
EMULATED_CUDA_CASES = [
    dict(case("causal zigzag, CUDA kernels", 128, causal=True, layout="zigzag", dtype="float16"), D=64, Dv=64,
         emulator=True),
    dict(case("window with global tokens, CUDA kernels", 128, window=(9, 5), dtype="bfloat16",
              **{"global": [[0, 63], [1, 64]]}), D=64, Dv=64, emulator=True),
]
MISMATCH = [dict(name="mismatched options", mismatch=True)]


@pytest.mark.parametrize("world", [2, 4])
def test_ring_matches_one_process(world, tmp_path):
    results = run_ranks(world, RING_CASES, tmp_path)
    worst = max(res["vs_one_process"] for rs in results.values() for res in rs)
    print(f"P={world}: ring cases, largest difference from one process {worst:.2e}")


@pytest.mark.parametrize("world", [2, 4])
def test_halo_matches_one_process(world, tmp_path):
    run_ranks(world, HALO_CASES, tmp_path)


@pytest.mark.skipif(not longattn.capabilities()["cuda_emulator_built"], reason="built without the CUDA emulator")
def test_cuda_kernels_on_the_emulator(tmp_path):
    """The CUDA backend's kernels (key padding for the global keys, Sq != Sk for the halo) under the same ring and
    halo, on the CUDA emulator: what NCCL ranks would run, short of the transport."""
    run_ranks(2, EMULATED_CUDA_CASES, tmp_path)


def test_single_rank_and_mismatched_options(tmp_path):
    run_ranks(1, RING_CASES[:3] + HALO_CASES[:2], tmp_path)
    run_ranks(2, MISMATCH, tmp_path)


def test_halo_traffic_does_not_grow_with_the_sequence(tmp_path):
    """Window (8, 8), P = 2: each rank sends its neighbour 8 rows of k and of v whatever S is (plus the options
    hash); dense ring traffic grows with S."""
    cases = [case(f"window S={S}", S, window=(8, 8)) for S in (64, 256)]
    cases += [case(f"dense S={S}", S) for S in (64, 256)]
    code = f"""
import json, os, sys
from datetime import timedelta
import torch, torch.distributed as dist
import longattn.distributed as ld
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
sent = []
for c in {cases!r}:
    n = c["S"] // 2
    q = torch.randn(c["B"], n, c["Hq"], c["D"]); k = torch.randn(c["B"], n, c["Hk"], c["D"])
    v = torch.randn(c["B"], n, c["Hk"], c["Dv"])
    ld.reset_bytes_sent()
    ld.attention(q, k, v, window=tuple(c.get("window", (-1, -1))))
    sent.append(ld.bytes_sent())
print(json.dumps(sent))
dist.destroy_process_group()
"""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               LONGATTN_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("ranks did not finish within 120 s")
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for stdout, _ in outs:
        window_small, window_large, dense_small, dense_large = json.loads(stdout.strip().splitlines()[-1])
        B, Hk, D, Dv = DIMS["B"], DIMS["Hk"], DIMS["D"], DIMS["Dv"]
        halo_rows = 8 * B * Hk * (D + Dv) * 4  # one side's halo: 8 key and value rows
        assert window_small == window_large, (window_small, window_large)
        assert halo_rows <= window_small <= halo_rows + 64, (window_small, halo_rows)
        assert dense_large > 3 * dense_small


def test_errors_name_the_argument_and_compile_works():
    import torch.distributed as dist

    q = torch.randn(1, 16, 2, 8)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="group: torch.distributed is not initialised"):
            longattn.distributed.attention(q, q, q)
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="layout: got 'stripes'"):
            longattn.distributed.attention(q, q, q, layout="stripes")
        with pytest.raises(ValueError, match="layout: 'zigzag' .* n = 15"):
            longattn.distributed.attention(q[:, :15], q[:, :15], q[:, :15], layout="zigzag")
        with pytest.raises(ValueError, match="q, k: shards of 16 and 8 positions"):
            longattn.distributed.attention(q, q[:, :8], q[:, :8])
        with pytest.raises(ValueError, match=r"global_tokens: got torch.bool shape \(1, 8\)"):
            longattn.distributed.attention(q, q, q, global_tokens=torch.zeros(1, 8, dtype=torch.bool))
        with pytest.raises(ValueError, match="window: got right = 3 with causal=True"):
            longattn.distributed.attention(q, q, q, window=(2, 3), causal=True)
        with pytest.raises(ValueError, match="softcap"):
            longattn.distributed.attention(q, q, q, softcap=-1.0)
        out = longattn.distributed.attention(q, q, q, causal=True)  # P = 1: the single-process result
        torch.testing.assert_close(out, longattn.attention(q, q, q, causal=True), rtol=1e-5, atol=1e-6)
        # torch.compile: the p2p transfers are a graph break (documented), the result is the same
        torch._dynamo.reset()
        compiled = torch.compile(lambda q: longattn.distributed.attention(q, q, q, window=(4, 4)) * 2)
        torch.testing.assert_close(compiled(q), 2 * longattn.sliding_window_attention(q, q, q, window=(4, 4)),
                                   rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()
