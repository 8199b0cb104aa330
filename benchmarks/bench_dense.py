"""Dense attention on the CPU: longattn vs torch SDPA vs the naive materialised softmax, side by side in one run.

B1 H8, D64 and D128, S 512..8192, causal and not, float32 and bfloat16. Prints GFLOP/s and ratios (bfloat16 rows
also: longattn bfloat16 over longattn float32, same shape), the host's CPU flags and the CPU path each dtype runs,
measures the sgemm rate of this machine in the same run (the practical FMA peak), writes
results/<name>.{csv,json,png}, and measures peak memory at S=32768 in fresh subprocesses (it must not grow like S²).

    python benchmarks/bench_dense.py            # the full sweep (several minutes on 2 cores)
    python benchmarks/bench_dense.py --quick    # a subset
    python benchmarks/bench_dense.py --name dense_zen5   # results of another host beside the README's
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
from longattn._bench import (attention_flops, cpu_dtype_paths, host_line, naive_bshd, run_memory_probe, sdpa_bshd,
                             time_interleaved)

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


def print_table(rows) -> None:
    """GFLOP/s longattn / SDPA (speed-up) per dtype, S and (head dim, causal); bfloat16 cells add longattn's
    bfloat16 speed-up over its own float32."""
    for dt in sorted({r["dtype"] for r in rows}, reverse=True):
        cols = sorted({(r["head_dim"], r["causal"]) for r in rows})
        print(f"\n{dt}: longattn / SDPA GFLOP/s (x vs SDPA" + (", x vs longattn float32)" if dt != "float32" else ")"))
        print("| S | " + " | ".join(f"D{d}{' causal' if c else ''}" for d, c in cols) + " |")
        print("| ---: |" + " :---: |" * len(cols))
        for S in sorted({r["seqlen"] for r in rows}):
            cells = []
            for d, c in cols:
                r = next(x for x in rows if (x["dtype"], x["seqlen"], x["head_dim"], x["causal"]) == (dt, S, d, c))
                own = f", {r['vs_own_float32']:.2f}x f32" if dt != "float32" and r.get("vs_own_float32") else ""
                cells.append(f"{r['longattn_gflops']:.0f} / {r['sdpa_gflops']:.0f} (**{r['vs_sdpa']:.2f}x**{own})")
            print(f"| {S} | " + " | ".join(cells) + " |")


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
    parser.add_argument("--name", default="dense", help="results file stem (default: dense)")
    parser.add_argument("--naive-max-s", type=int, default=4096,
                        help="longest S the naive materialised softmax runs at (default 4096; it is slow in bf16)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    seqlens = [1024, 4096] if args.quick else [512, 1024, 2048, 4096, 8192]
    caps = longattn.capabilities()
    print(host_line())
    for line in cpu_dtype_paths(caps["cpu_isa_active"]):
        print(f"CPU path: {line}")
    print(f"longattn {caps['longattn']} ({caps['cpu_isa_active']}, {caps['threads']} threads), torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)")
    # torch's OpenMP workers spin after each parallel region (libgomp's default wait policy), holding the cores the
    # next call needs: in interleaved timing that slows whatever runs right after SDPA (longattn's own pool) on
    # calls of a few ms. OMP_WAIT_POLICY=PASSIVE (set before the run) makes them sleep at once.
    omp_policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp spins)")
    print(f"OMP_WAIT_POLICY: {omp_policy}")
    started = time.time()
    with torch.inference_mode():
        gemm = sgemm_gflops()
        print(f"sgemm 2048^3 (torch.mm, same run): {gemm:.1f} GFLOP/s")
        rows = sweep(seqlens, [64, 128], [torch.float32, torch.bfloat16], naive_max_s=args.naive_max_s,
                     reps=args.reps)
    memory = [] if args.no_memory else peak_memory([8192, 32768])
    for r in rows:
        r["of_sgemm"] = round(r["longattn_gflops"] / gemm, 3)  # share of the machine's sgemm rate, same run
        same = [f for f in rows if f["dtype"] == "float32" and (f["head_dim"], f["causal"], f["seqlen"]) ==
                (r["head_dim"], r["causal"], r["seqlen"])]
        r["vs_own_float32"] = round(same[0]["longattn_ms"] / r["longattn_ms"], 3) if same else None
    print_table(rows)
    meta = {"host": host_line(), "cpu_paths": cpu_dtype_paths(caps["cpu_isa_active"]),
            "machine_cpu_isa": caps["cpu_isa_active"], "threads": caps["threads"], "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "sgemm_gflops": round(gemm, 1),
            "omp_wait_policy": omp_policy,
            "seconds": round(time.time() - started, 1)}
    with open(RESULTS / f"{args.name}.json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "memory": memory}, f, indent=1)
    with open(RESULTS / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {RESULTS / (args.name + '.json')} and {args.name}.csv")
    plot(rows, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    sys.exit(main())
