"""`python -m longattn`: what this build can do here, then a quick side-by-side benchmark against torch SDPA."""

from __future__ import annotations

import argparse

import torch

import longattn
from longattn._bench import attention_flops, sdpa_bshd, time_interleaved


def report() -> None:
    caps = longattn.capabilities()
    print("longattn capability report")
    print(f"  version              {caps['longattn']} (torch {caps['torch']})")
    print(f"  CPU kernels          {caps['cpu_isa_active']} active; compiled and usable here: "
          f"{', '.join(caps['cpu_isa_compiled'])}")
    print(f"  CPU threads          {caps['threads']} (LONGATTN_NUM_THREADS={caps['threads_env'] or 'unset'})")
    print(f"  CUDA toolkit at build {'found' if caps['cuda_toolkit_at_build'] else 'not found'}; "
          f"CUDA kernels built: {'yes' if caps['cuda_kernels_built'] else 'no (not implemented yet)'}; "
          f"archs: {', '.join(caps['cuda_archs']) or '-'}")
    print(f"  GPU                  {caps['cuda_device'] or 'none usable'}")


def quick_benchmark(seqlens, reps: int) -> None:
    device = "cpu"  # the only device with kernels in this build
    print(f"\nquick benchmark on {device}: B1 H8 D64, longattn.attention vs torch SDPA (same inputs, interleaved runs)")
    print(f"{'dtype':>9} {'causal':>6} {'S':>6} | {'longattn ms':>11} {'GFLOP/s':>8} | {'SDPA ms':>8} {'GFLOP/s':>8} "
          f"| {'speed-up':>8}")
    for dtype in (torch.float32, torch.bfloat16):
        for causal in (False, True):
            for S in seqlens:
                q, k, v = (torch.randn(1, S, 8, 64, dtype=dtype) for _ in range(3))
                t_la, t_sdpa = time_interleaved([lambda: longattn.attention(q, k, v, causal=causal),
                                                 lambda: sdpa_bshd(q, k, v, causal)], reps=reps)
                flops = attention_flops(1, 8, S, S, 64, causal)
                print(f"{str(dtype).removeprefix('torch.'):>9} {str(causal):>6} {S:>6} | {t_la * 1e3:11.2f} "
                      f"{flops / t_la / 1e9:8.1f} | {t_sdpa * 1e3:8.2f} {flops / t_sdpa / 1e9:8.1f} "
                      f"| {t_sdpa / t_la:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m longattn", description=__doc__)
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-bench", action="store_true", help="only print the capability report")
    args = parser.parse_args()
    report()
    if not args.no_bench:
        with torch.inference_mode():
            quick_benchmark(args.seqlens, args.reps)


if __name__ == "__main__":
    main()
