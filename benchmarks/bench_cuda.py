"""Attention on a CUDA GPU: longattn vs torch SDPA with each backend forced (flash, cuDNN, efficient) vs
flex_attention (compiled, sliding-window block mask), side by side in one run, bfloat16.

Dense: B·S = 16k tokens, H·D = 2048 (D 64 -> H 32, D 128 -> H 16), S 512 .. 32768, causal and not.
Sliding window: window (4095, 0) (4096 keys, causal, Mistral-style), D 128, H 16, B 1, S 4096 .. 131072.
Prints TFLOP/s tables (FLOPs count only visible query-key pairs: 4·B·H·pairs·D), writes results/cuda.{json,png}.

    python benchmarks/bench_cuda.py            # the full sweep
    python benchmarks/bench_cuda.py --quick    # S 1024, 8192 only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import longattn
from longattn._bench import attention_flops, cuda_time

RESULTS = Path(__file__).resolve().parent / "results"


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal).transpose(1, 2)
    return run


def band_pairs(S: int, left: int) -> int:
    i = torch.arange(S)
    return int((i - (i - left).clamp(min=0) + 1).sum())


def dense_sweep(seqlens, head_dims):
    from torch.nn.attention import SDPBackend
    peers = {"sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
             "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
    rows = []
    for D in head_dims:
        H = 2048 // D
        for causal in (False, True):
            for S in seqlens:
                B = max(1, 16384 // S)
                q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                flops = attention_flops(B, H, S, S, D, causal)
                row = {"head_dim": D, "causal": causal, "seqlen": S, "batch": B}
                row["longattn"] = flops / cuda_time(lambda: longattn.attention(q, k, v, causal=causal)) / 1e12
                for name, fn in peers.items():
                    try:
                        row[name] = flops / cuda_time(lambda: fn(q, k, v, causal)) / 1e12
                    except RuntimeError as e:  # a backend that cannot serve this shape on this GPU
                        row[name] = None
                        row[name + "_error"] = str(e).splitlines()[0][:120]
                rows.append(row)
                cells = " | ".join(f"{n} {row[n]:6.1f}" if row.get(n) else f"{n}    -  " for n in ["longattn", *peers])
                print(f"D{D:<4} causal={causal!s:<5} S={S:<6} B={B:<3} TFLOP/s: {cells}", flush=True)
    return rows


def window_sweep(seqlens, left: int = 4095, D: int = 128, H: int = 16):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    rows = []
    for S in seqlens:
        q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4.0 * H * band_pairs(S, left) * D
        row = {"seqlen": S, "window": [left, 0]}
        row["longattn"] = flops / cuda_time(lambda: longattn.sliding_window_attention(q, k, v, window=(left, 0))) / 1e12
        row["longattn_dense_causal"] = (attention_flops(1, H, S, S, D, True) /
                                        cuda_time(lambda: longattn.attention(q, k, v, causal=True), reps=5) / 1e12)
        try:
            mask = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= left), None, None, S, S,
                                     device="cuda")
            qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
            row["flex"] = flops / cuda_time(lambda: flex(qh, kh, vh, block_mask=mask)) / 1e12
        except Exception as e:  # noqa: BLE001 - report any failure of the peer, keep going
            row["flex"] = None
            row["flex_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
        flex_cell = f"{row['flex']:6.1f}" if row["flex"] else "   -  "
        print(f"window (4095, 0) S={S:<7} TFLOP/s (in-window): longattn {row['longattn']:6.1f} | flex {flex_cell} | "
              f"longattn dense causal {row['longattn_dense_causal']:6.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not longattn.capabilities()["cuda_kernels_built"]:
        print("no usable CUDA GPU, or longattn was built without CUDA kernels: nothing to measure", file=sys.stderr)
        sys.exit(1)
    caps = longattn.capabilities()
    print(f"longattn {caps['longattn']} on {caps['cuda_device']} (compute capability {caps['cuda_capability']}), "
          f"archs {caps['cuda_archs']}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    seqlens = [1024, 8192] if args.quick else [512, 1024, 2048, 4096, 8192, 16384, 32768]
    dense = dense_sweep(seqlens, [64, 128])
    window = window_sweep([4096, 16384] if args.quick else [4096, 8192, 16384, 32768, 65536, 131072])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cuda.json").write_text(json.dumps({"device": caps["cuda_device"], "dense": dense,
                                                   "window": window}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for ax, D in zip(axes[:2], (64, 128)):
            for name in ("longattn", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient"):
                for causal, style in ((False, "-"), (True, "--")):
                    pts = [(r["seqlen"], r[name]) for r in dense if r["head_dim"] == D and r["causal"] == causal
                           and r.get(name)]
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", label=f"{name}{' causal' if causal else ''}")
            ax.set(xscale="log", xlabel="S", ylabel="TFLOP/s", title=f"dense bf16 D{D}, B·S = 16k, H·D = 2048")
            ax.legend(fontsize=7)
        for name in ("longattn", "flex"):
            pts = [(r["seqlen"], r[name]) for r in window if r.get(name)]
            if pts:
                axes[2].plot(*zip(*pts), marker="o", label=name)
        axes[2].set(xscale="log", xlabel="S", ylabel="in-window TFLOP/s", title="window (4095, 0), bf16 D128 H16")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "cuda.png", dpi=100)
    except ImportError:
        pass
    print(f"wrote {RESULTS / 'cuda.json'}")


if __name__ == "__main__":
    main()
