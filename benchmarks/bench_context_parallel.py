"""Context parallelism on this machine: longattn.distributed.attention over P = 1 and 2 gloo ranks (processes on
127.0.0.1, one thread each), dense (ring) and sliding window (halo exchange), float32, B1 H4 D64.

Per case and P: the time of one call (the slowest rank; median of interleaved repetitions, a barrier before each),
the bytes each rank sends (longattn.distributed.bytes_sent(): the point-to-point sends and its share of the
collectives), and the peak resident memory one call adds on a rank (inputs excluded). The window's halo bound is
2·(left+right)·Hk·(D+Dv)·4·B bytes: what the two neighbours' halos hold at most. Writes results/context_parallel.json.

    python benchmarks/bench_context_parallel.py            # dense S 4096..32768, window S 16384..131072
    python benchmarks/bench_context_parallel.py --quick    # one size of each
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"
B, H, D = 1, 4, 64
WINDOW = (256, 256)


def cases(quick: bool):
    dense = [4096, 16384] if quick else [4096, 8192, 16384, 32768]
    window = [16384, 65536] if quick else [16384, 32768, 65536, 131072]
    out = [dict(kind="dense", S=S, causal=False, layout="contiguous") for S in dense]
    out += [dict(kind="causal zigzag", S=16384, causal=True, layout="zigzag")]
    out += [dict(kind="window (256, 256)", S=S, window=WINDOW, layout="contiguous") for S in window]
    return out


def rank_main(case_list, reps):
    """One rank: every case, timed, traffic counted, memory probed; rank 0 prints the JSON."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import longattn.distributed as ld
    from longattn._bench import peak_rss_growth_mib

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    rows = []
    for c in case_list:
        n = c["S"] // world
        g = torch.Generator().manual_seed(rank)
        q, k, v = (torch.randn(B, n, H, D, generator=g) for _ in range(3))
        kw = dict(layout=c["layout"], causal=c.get("causal", False), window=tuple(c.get("window", (-1, -1))))
        with torch.inference_mode():
            ld.attention(q, k, v, **kw)  # warm-up
        times = []
        for _ in range(reps if c["S"] < 32768 or "window" in c else 1):
            dist.barrier()
            t = time.perf_counter()
            with torch.inference_mode():
                ld.attention(q, k, v, **kw)
            times.append(time.perf_counter() - t)
        ld.reset_bytes_sent()
        peak, out_mib = peak_rss_growth_mib(lambda: ld.attention(q, k, v, **kw))
        sent = ld.bytes_sent()
        t = torch.tensor([sorted(times)[len(times) // 2], sent, peak], dtype=torch.float64)
        gathered = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(gathered, t)
        if rank == 0:
            per_rank = torch.stack(gathered)
            rows.append(dict(c, P=world, time_s=float(per_rank[:, 0].max()),
                             bytes_sent_per_rank=int(per_rank[:, 1].max()),
                             peak_mib_per_rank=float(per_rank[:, 2].max()), out_mib=out_mib))
    if rank == 0:
        print("RESULT " + json.dumps(rows))
    dist.destroy_process_group()


def launch(world, case_list, reps):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
               LONGATTN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    args = [sys.executable, __file__, "--rank-worker", json.dumps(case_list), "--reps", str(reps)]
    procs = [subprocess.Popen(args, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, text=True)
             for r in range(world)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed (P = {world})")
    line = next(x for x in outs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one dense and one window size")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per case and P (median)")
    ap.add_argument("--rank-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        return rank_main(json.loads(args.rank_worker), args.reps)

    from longattn._bench import host_line

    print(host_line())
    print(f"B{B} H{H} D{D} float32, one thread per rank, gloo on 127.0.0.1")
    case_list = cases(args.quick)
    by_p = {world: launch(world, case_list, args.reps) for world in (1, 2)}
    rows = []
    halo_bound = 2 * (WINDOW[0] + WINDOW[1]) * H * (D + D) * 4 * B
    print("| case | S | P=1 s | P=2 s | speed-up | sent/rank P=2 (MiB) | window bound (MiB) | peak/rank P=1 (MiB) "
          "| peak/rank P=2 (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for one, two in zip(by_p[1], by_p[2]):
        row = dict(case=one["kind"], S=one["S"], p1_s=one["time_s"], p2_s=two["time_s"],
                   speedup=one["time_s"] / two["time_s"], sent_p2=two["bytes_sent_per_rank"],
                   peak_p1_mib=one["peak_mib_per_rank"], peak_p2_mib=two["peak_mib_per_rank"])
        rows.append(row)
        bound = f"{halo_bound / 2**20:.3f}" if "window" in one["kind"] else "–"
        print(f"| {row['case']} | {row['S']} | {row['p1_s']:.3f} | {row['p2_s']:.3f} | {row['speedup']:.2f}× | "
              f"{row['sent_p2'] / 2**20:.3f} | {bound} | {row['peak_p1_mib']:.1f} | {row['peak_p2_mib']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "context_parallel.json").write_text(json.dumps(dict(host=host_line(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
