"""`python -m longattn`: what this build can do here, then a quick side-by-side benchmark against torch SDPA
(dense and causal attention; sliding window against SDPA with a band mask)."""

from __future__ import annotations

import argparse
import os

import torch

import longattn
from longattn._bench import attention_flops, cpu_dtype_paths, host_line, sdpa_bshd, time_interleaved


def report() -> None:
    caps = longattn.capabilities()
    print("longattn capability report")
    print(f"  version              {caps['longattn']} (torch {caps['torch']})")
    print(f"  host                 {host_line().removeprefix('host: ')}")
    isa_env = caps["cpu_isa_env"]
    print(f"  CPU kernels          {caps['cpu_isa_active']} active; compiled and usable here: "
          f"{', '.join(caps['cpu_isa_compiled'])}" + (f" (LONGATTN_CPU_ISA={isa_env!r})" if isa_env else ""))
    threads_env = caps["threads_env"]
    for line in cpu_dtype_paths(caps["cpu_isa_active"]):
        print(f"  CPU dtype paths      {line}")
    print(f"  CPU threads          {caps['threads']}" + (f" (LONGATTN_NUM_THREADS={threads_env!r})" if threads_env
                                                         else " (LONGATTN_NUM_THREADS unset: the usable cores)"))
    for problem in caps["environment_warnings"]:
        print(f"  warning              {problem}")
    print(f"  CUDA kernels         {'built' if caps['cuda_kernels_built'] else 'not built (no nvcc at build time)'}; "
          f"archs: {', '.join(caps['cuda_archs']) or '-'}")
    emulator = ("built (longattn.testing.cuda_emulator(): the CUDA kernels on the CPU, for tests; memory checker "
                f"{'sees every load and store' if caps['cuda_emulator_plain_access_checks'] else 'sees PTX only'})"
                if caps["cuda_emulator_built"] else "not built (LONGATTN_CUDA_EMULATOR=OFF)")
    print(f"  CUDA emulator        {emulator}")
    gpu = caps["cuda_device"]
    print(f"  GPU                  {gpu + ' (compute capability ' + caps['cuda_capability'] + ')' if gpu else 'none usable'}")


def quick_benchmark(seqlens, reps: int, device: str) -> None:
    dtypes = (torch.float16, torch.bfloat16) if device == "cuda" else (torch.float32, torch.bfloat16)
    print(f"\nquick benchmark on {device}: B1 H8 D64, longattn.attention vs torch SDPA (same inputs, interleaved runs)")
    print(host_line())
    if device == "cpu" and not os.environ.get("OMP_WAIT_POLICY"):
        print("OMP_WAIT_POLICY unset: torch's OpenMP workers spin after each SDPA call and share the cores with the "
              "next longattn call (short calls read slower); OMP_WAIT_POLICY=PASSIVE avoids it")
    print(f"{'dtype':>9} {'causal':>6} {'S':>6} | {'longattn ms':>11} {'GFLOP/s':>8} | {'SDPA ms':>8} {'GFLOP/s':>8} "
          f"| {'speed-up':>8}")
    for dtype in dtypes:
        for causal in (False, True):
            for S in seqlens:
                q, k, v = (torch.randn(1, S, 8, 64, dtype=dtype, device=device) for _ in range(3))
                t_la, t_sdpa = time_interleaved([lambda: longattn.attention(q, k, v, causal=causal),
                                                 lambda: sdpa_bshd(q, k, v, causal)], reps=reps, device=device)
                flops = attention_flops(1, 8, S, S, 64, causal)
                print(f"{str(dtype).removeprefix('torch.'):>9} {str(causal):>6} {S:>6} | {t_la * 1e3:11.2f} "
                      f"{flops / t_la / 1e9:8.1f} | {t_sdpa * 1e3:8.2f} {flops / t_sdpa / 1e9:8.1f} "
                      f"| {t_sdpa / t_la:7.2f}x")


def band_pairs(S: int, left: int, right: int) -> int:
    i = torch.arange(S)
    return int(((i + right).clamp(max=S - 1) - (i - left).clamp(min=0) + 1).sum())


def quick_window_benchmark(seqlens, reps: int, device: str, half: int = 256) -> None:
    print(f"\nsliding window (left = right = {half}, Longformer attention_window={2 * half}), B1 H8 D64: "
          "longattn.sliding_window_attention vs torch SDPA with a boolean band mask and vs longattn.attention (dense)")
    print(host_line())
    print(f"{'dtype':>9} {'S':>6} | {'window ms':>9} {'GFLOP/s':>8} | {'SDPA+mask ms':>12} {'speed-up':>8} "
          f"| {'dense ms':>8} {'speed-up':>8}")
    for dtype in ((torch.float16, torch.bfloat16) if device == "cuda" else (torch.float32, torch.bfloat16)):
        for S in seqlens:
            q, k, v = (torch.randn(1, S, 8, 64, dtype=dtype, device=device) for _ in range(3))
            i = torch.arange(S, device=device)
            band = (i[None, :] - i[:, None]).abs() <= half
            t_win, t_sdpa, t_dense = time_interleaved([
                lambda: longattn.sliding_window_attention(q, k, v, window=(half, half)),
                lambda: torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=band),
                lambda: longattn.attention(q, k, v)], reps=reps, device=device)
            flops = 4.0 * 8 * band_pairs(S, half, half) * 64
            print(f"{str(dtype).removeprefix('torch.'):>9} {S:>6} | {t_win * 1e3:9.2f} {flops / t_win / 1e9:8.1f} "
                  f"| {t_sdpa * 1e3:12.2f} {t_sdpa / t_win:7.2f}x | {t_dense * 1e3:8.2f} {t_dense / t_win:7.2f}x")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m longattn", description=__doc__)
    parser.add_argument("--seqlens", type=positive_int, nargs="+", default=[1024, 4096], metavar="S",
                        help="sequence lengths of the dense benchmark (default: 1024 4096)")
    parser.add_argument("--window-seqlens", type=positive_int, nargs="+", default=[4096, 8192], metavar="S",
                        help="sequence lengths of the sliding-window benchmark (default: 4096 8192)")
    parser.add_argument("--reps", type=positive_int, default=5, metavar="N",
                        help="timed repetitions per case, after one warm-up; the median is shown (default: 5)")
    parser.add_argument("--no-bench", action="store_true", help="only print the capability report")
    args = parser.parse_args()
    report()
    if not args.no_bench:
        with torch.inference_mode():
            device = "cuda" if torch.cuda.is_available() and longattn.capabilities()["cuda_kernels_built"] else "cpu"
            quick_benchmark(args.seqlens, args.reps, device)
            quick_window_benchmark(args.window_seqlens, args.reps, device)


if __name__ == "__main__":
    main()
