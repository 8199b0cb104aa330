"""One rank of the context-parallel tests (tests/python/test_distributed.py starts P of these on 127.0.0.1).

Every rank builds the same whole-sequence inputs from a seed, takes its shard, calls longattn.distributed.attention,
and compares its shard of the output and lse with (a) the float64 oracle of the whole sequence, by the error bound
of the other tests (2x PyTorch's own error in the dtype, plus a floor), and (b) one process running longattn on the
whole sequence. Writes one JSON line per case to $LONGATTN_TEST_OUT.<rank>.
"""

import json
import os
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import longattn  # noqa: E402
import longattn.distributed  # noqa: E402
from helpers import assert_matches_oracle  # noqa: E402
from longattn import reference  # noqa: E402


def shard(t, rank, world, layout, dim=1):
    """This rank's rows of a whole-sequence tensor, in the layout's order."""
    S = t.shape[dim]
    if layout == "contiguous":
        n = S // world
        return t.narrow(dim, rank * n, n)
    c = S // (2 * world)
    return torch.cat([t.narrow(dim, rank * c, c), t.narrow(dim, (2 * world - 1 - rank) * c, c)], dim=dim)


def run_case(case, rank, world):
    g = torch.Generator().manual_seed(case.get("seed", 0))
    B, S, Hq, Hk, D, Dv = (case[x] for x in ("B", "S", "Hq", "Hk", "D", "Dv"))
    dtype = getattr(torch, case.get("dtype", "float32"))
    q = torch.randn(B, S, Hq, D, generator=g).to(dtype)
    k = torch.randn(B, S, Hk, D, generator=g).to(dtype)
    v = torch.randn(B, S, Hk, Dv, generator=g).to(dtype)
    opts = {name: case[name] for name in ("causal", "dilation", "softcap", "scale") if name in case}
    window = tuple(case.get("window", (-1, -1)))
    glob = None
    if "global" in case:  # [(batch, position), ...]
        glob = torch.zeros(B, S, dtype=torch.bool)
        for b, pos in case["global"]:
            glob[b, pos] = True
    layout = case.get("layout", "contiguous")
    longattn.distributed.HALO_BLOCK_ROWS = case.get("halo_block_rows", 4096)
    if case.get("emulator"):  # the CUDA backend's kernels, on the CUDA emulator (CPU tensors)
        before = longattn.testing.emulator_stats()["launches"]
        with longattn.testing.cuda_emulator():
            result = compare(case, q, k, v, opts, window, glob, layout, rank, world)
        assert longattn.testing.emulator_stats()["launches"] > before, "the emulator ran no kernel"
        return result
    return compare(case, q, k, v, opts, window, glob, layout, rank, world)


def compare(case, q, k, v, opts, window, glob, layout, rank, world):
    dtype = q.dtype
    out, lse = longattn.distributed.attention(shard(q, rank, world, layout), shard(k, rank, world, layout),
                                              shard(v, rank, world, layout), layout=layout, window=window,
                                              global_tokens=glob, return_lse=True, **opts)
    ref_opts = dict(opts)
    ref64, lse64 = reference.sliding_window_attention(q, k, v, window=window, global_tokens=glob, **ref_opts)
    same_dtype, _ = reference.sliding_window_attention(q, k, v, window=window, global_tokens=glob,
                                                       compute_dtype=dtype, **ref_opts)
    whole, whole_lse = longattn.sliding_window_attention(q, k, v, window=window, global_tokens=glob,
                                                         return_lse=True, **opts)
    mine = lambda t: shard(t, rank, world, layout)  # noqa: E731
    assert_matches_oracle(out, mine(ref64).to(torch.float64), mine(same_dtype), "out")
    assert_matches_oracle(lse, shard(lse64, rank, world, layout, dim=2), shard(lse64, rank, world, layout, dim=2)
                          .float(), "lse")
    return {"vs_oracle": (out.double() - mine(ref64)).abs().max().item(),
            "vs_one_process": (out.double() - mine(whole).double()).abs().max().item(),
            "lse_vs_one_process": (lse - shard(whole_lse, rank, world, layout, dim=2)).abs().max().item()}


def run_mismatch(case, rank, world):
    """Ranks pass different options, or one rank's arguments are bad: every rank must raise a ValueError that names
    what each rank passed, none may hang in a collective."""
    q = torch.randn(1, 32, 2, 8)
    raised = []
    for bad_window in ((4, 5), (-2, 0)):
        window = (4, 4) if rank == 0 else bad_window
        try:
            longattn.distributed.attention(q, q, q, window=window)
        except ValueError as e:
            assert "every rank must call" in str(e), str(e)
            assert ("window=(4, 5)" if bad_window == (4, 5) else "rank 1: ValueError: window: the left bound is -2") \
                in str(e), str(e)
            raised.append(str(e)[:200])
            continue
        raise AssertionError(f"no error for window {window} on rank {rank}")
    # the same bad argument on every rank: that error itself, everywhere
    try:
        longattn.distributed.attention(q, q, q, window=(-2, 0))
    except ValueError as e:
        assert str(e).startswith("window: the left bound is -2"), str(e)
    else:
        raise AssertionError("no error for window (-2, 0)")
    return {"raised": raised}


def main():
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    cases = json.loads(os.environ["LONGATTN_TEST_CASES"])
    failed = False
    with open(f"{os.environ['LONGATTN_TEST_OUT']}.{rank}", "w") as f:
        for case in cases:
            try:
                result = run_mismatch(case, rank, world) if case.get("mismatch") else run_case(case, rank, world)
                f.write(json.dumps({"case": case["name"], "ok": True, **result}) + "\n")
            except Exception:  # noqa: BLE001 - reported to the parent, which fails the test with it
                failed = True
                f.write(json.dumps({"case": case["name"], "ok": False, "error": traceback.format_exc()}) + "\n")
            f.flush()
    dist.destroy_process_group()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
