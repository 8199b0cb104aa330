"""Dense attention on the CPU: longattn vs torch SDPA vs the naive materialised softmax, side by side in one run.

B1 H8, D64 and D128, S 512..8192, causal and not, float32 and bfloat16. Prints GFLOP/s and ratios, measures the
sgemm rate of this machine in the same run (the practical FMA peak), writes results/dense.{csv,json,png}, and
measures peak memory at S=32768 in fresh subprocesses (it must not grow like S²).

    python benchmarks/bench_dense.py            # the full sweep (several minutes on 2 cores)
    python benchmarks/bench_dense.py --quick    # a subset
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

import longattn
from longattn._bench import attention_flops, naive_bshd, run_memory_probe, sdpa_bshd, time_interleaved

RESULTS = Path(__file__).resolve().parent / "results"


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    (t,) = time_interleaved([lambda: a @ b], reps=reps)
    return 2 * n**3 / t / 1e9


def sweep(seqlens, head_dims, dtypes, naive_max_s: int, reps: int):
    rows = []
    for dtype in dtypes:
        for D in head_dims:
            for causal in (False, True):
                for S in seqlens:
                    q, k, v = (torch.randn(1, S, 8, D, dtype=dtype) for _ in range(3))
                    fns = {"longattn": lambda: longattn.attention(q, k, v, causal=causal),
                           "sdpa": lambda: sdpa_bshd(q, k, v, causal)}
                    if S <= naive_max_s:
                        fns["naive"] = lambda: naive_bshd(q, k, v, causal)
                    times = dict(zip(fns, time_interleaved(list(fns.values()), reps=reps if S < 4096 else 3)))
                    flops = attention_flops(1, 8, S, S, D, causal)
                    row = {"dtype": str(dtype).removeprefix("torch."), "head_dim": D, "causal": causal, "seqlen": S}
                    for name in ("longattn", "sdpa", "naive"):
                        t = times.get(name)
                        row[f"{name}_ms"] = None if t is None else round(t * 1e3, 3)
                        row[f"{name}_gflops"] = None if t is None else round(flops / t / 1e9, 1)
                    row["vs_sdpa"] = round(times["sdpa"] / times["longattn"], 3)
                    row["vs_naive"] = None if "naive" not in times else round(times["naive"] / times["longattn"], 3)
                    rows.append(row)
                    naive = f"{row['naive_gflops']:7.1f}" if row["naive_gflops"] else "      -"
                    print(f"{row['dtype']:>9} D{D:<4} causal={causal!s:<5} S={S:<6} longattn {row['longattn_gflops']:6.1f} "
                          f"| sdpa {row['sdpa_gflops']:6.1f} | naive {naive} GFLOP/s | x{row['vs_sdpa']:.2f} vs sdpa",
                          flush=True)
    return rows


MEMORY_PROBE = r"""
import sys, torch, longattn
from longattn._bench import peak_rss_growth_mib, sdpa_bshd

impl, S, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = (lambda q, k, v: longattn.attention(q, k, v)) if impl == "longattn" else (lambda q, k, v: sdpa_bshd(q, k, v, False))
with torch.inference_mode():  # first call pays one-off imports and thread start-up: not what we measure
    run(*(torch.randn(1, 256, 8, D) for _ in range(3)))
q, k, v = (torch.randn(1, S, 8, D) for _ in range(3))
print(*peak_rss_growth_mib(lambda: run(q, k, v)))
"""


def peak_memory(seqlens, D: int = 64):
    """Peak resident memory a call adds (MiB, output included), in a fresh process per measurement."""
    rows = []
    for S in seqlens:
        for impl in ("longattn", "sdpa"):
            measured = run_memory_probe(MEMORY_PROBE, impl, S, D)
            if measured is None:
                continue
            extra, out_mib = measured
            rows.append({"impl": impl, "seqlen": S, "head_dim": D, "extra_peak_mib": round(extra, 1),
                         "output_mib": round(out_mib, 1),
                         "naive_scores_mib": round(8 * S * S * 4 / 2**20, 1)})
            print(f"memory S={S:<6} {impl:<8} peak growth {extra:8.1f} MiB (output itself {out_mib:.1f} MiB; "
                  f"a materialised fp32 score matrix would be {8 * S * S * 4 / 2**20:.0f} MiB)", flush=True)
    return rows


def plot(rows, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    dtypes = sorted({r["dtype"] for r in rows})
    dims = sorted({r["head_dim"] for r in rows})
    fig, axes = plt.subplots(len(dtypes), len(dims), figsize=(5.5 * len(dims), 4 * len(dtypes)), squeeze=False)
    for i, dt in enumerate(dtypes):
        for j, D in enumerate(dims):
            ax = axes[i][j]
            for causal, style in ((False, "-"), (True, "--")):
                sel = [r for r in rows if r["dtype"] == dt and r["head_dim"] == D and r["causal"] == causal]
                S = [r["seqlen"] for r in sel]
                for impl, color in (("longattn", "tab:red"), ("sdpa", "tab:blue"), ("naive", "tab:gray")):
                    pts = [(s, r[f"{impl}_gflops"]) for s, r in zip(S, sel) if r[f"{impl}_gflops"]]
                    if pts:
                        ax.plot(*zip(*pts), style, color=color, marker="o", ms=3,
                                label=f"{impl}{' causal' if causal else ''}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dt}, B1 H8 D{D}")
            ax.set_xlabel("sequence length")
            ax.set_ylabel("GFLOP/s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("longattn dense attention vs torch SDPA on this CPU (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    seqlens = [1024, 4096] if args.quick else [512, 1024, 2048, 4096, 8192]
    caps = longattn.capabilities()
    print(f"longattn {caps['longattn']} ({caps['cpu_isa_active']}, {caps['threads']} threads), torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)")
    started = time.time()
    with torch.inference_mode():
        gemm = sgemm_gflops()
        print(f"sgemm 2048^3 (torch.mm, same run): {gemm:.1f} GFLOP/s")
        rows = sweep(seqlens, [64, 128], [torch.float32, torch.bfloat16], naive_max_s=4096, reps=args.reps)
    memory = [] if args.no_memory else peak_memory([8192, 32768])
    for r in rows:
        r["of_sgemm"] = round(r["longattn_gflops"] / gemm, 3)  # share of the machine's sgemm rate, same run
    meta = {"machine_cpu_isa": caps["cpu_isa_active"], "threads": caps["threads"], "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "sgemm_gflops": round(gemm, 1),
            "seconds": round(time.time() - started, 1)}
    with open(RESULTS / "dense.json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "memory": memory}, f, indent=1)
    with open(RESULTS / "dense.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {RESULTS / 'dense.json'} and dense.csv")
    plot(rows, RESULTS / "dense.png")


if __name__ == "__main__":
    sys.exit(main())
