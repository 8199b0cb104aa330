"""Side-by-side timing helpers shared by `python -m longattn` and benchmarks/ (kept out of the import path)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import torch

from . import _C


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: Sequence[Callable[[], object]], *, reps: int = 5, warmup: int = 1,
                     device="cpu") -> list[float]:
    """Median seconds per call of each fn, calls interleaved (a, b, a, b, ...) so drift on a noisy machine hits all
    of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool) -> float:
    """4·B·H·(visible query-key pairs)·D, counting only pairs the mask lets through (bottom-right causal)."""
    if causal:
        offset = seqlen_k - seqlen_q
        pairs = sum(max(0, min(seqlen_k, i + offset + 1)) for i in range(seqlen_q))
    else:
        pairs = seqlen_q * seqlen_k
    return 4.0 * batch * heads * pairs * head_dim


def sdpa_bshd(q, k, v, causal: bool):
    """torch SDPA on BSHD inputs (it wants BHSD; the transposes are free views)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
        enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def naive_bshd(q, k, v, causal: bool):
    """The materialised-softmax baseline: the full (Sq, Sk) score matrix, as a plain PyTorch user would write it."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = scores.shape[-2:]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2)


def cuda_time(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median seconds per call on the current CUDA device, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def cpu_dtype_paths(isa: str) -> list[str]:
    """Which CPU engine each input dtype runs under the active ISA (for reports and benchmark tables)."""
    if isa in ("amx", "amx_model"):
        fp16_tiles = isa == "amx_model" or _C.cpu_amx_fp16_supported()
        tiles = "modelled AMX tiles (amx_model: a test build, slow)" if isa == "amx_model" else "AMX tiles"
        base = "avx2" if isa == "amx_model" else "avx512"
        dtypes = "bfloat16, float16" if fp16_tiles else "bfloat16"
        rest = "float32" if fp16_tiles else "float32, float16"
        return [f"{dtypes}: {tiles} (TDPBF16PS{'/TDPFP16PS' if fp16_tiles else ''} tile products, float32 "
                "accumulation and softmax, P rounded to the input dtype)",
                f"{rest}: the {base} float32 FMA engine" + ("" if fp16_tiles else
                                                               " (float16 converted: this CPU has no AMX-FP16)")]
    if isa == "avx512_bf16":
        return ["bfloat16: bfloat16 tiles on AVX512-BF16 (VDPBF16PS pair dot products, float32 accumulation and "
                "softmax, P rounded to bfloat16)",
                "float32, float16: the avx512 float32 FMA engine (float16 converted as tiles are packed)"]
    return [f"float32, float16 and bfloat16 all run the {isa} float32 FMA engine (16-bit inputs are converted as "
            "tiles are packed; float32 accumulation)"]


def host_line() -> str:
    """The host this run measured: CPU model, usable cores and the vector / matrix features that decide which kernel
    paths run (printed with every benchmark table: the CPU differs from machine to machine)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_bf16", "amx_fp16"]
    have = [f for f in wanted if f in flags]
    missing = [f for f in wanted if f not in flags]
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"host: {model}, {cores} usable cores; CPU flags: {' '.join(have) or '-'}"
            f"{'; absent: ' + ' '.join(missing) if missing else ''}")


def first_line(e: BaseException) -> str:
    """One line saying why a peer failed, for benchmark reports."""
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def fmt(x, spec: str, width: int) -> str:
    """A table cell: x formatted, or '-' when there is no value."""
    return f"{x:{spec}}".rjust(width) if x is not None else "-".rjust(width)


def plot_time_vs_seqlen(rows, style: dict, subtitle, title: str, path) -> None:
    """Log-log time per call vs S, one panel per dtype. rows carry 'dtype', 'seqlen' and '<name>_ms' per contestant;
    style maps a contestant name to (colour, line style, label); subtitle(dtype) titles a panel."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        sel = sorted((r for r in rows if r["dtype"] == dt), key=lambda r: r["seqlen"])
        for name, (color, ls, label) in style.items():
            pts = [(r["seqlen"], r[f"{name}_ms"]) for r in sel if r.get(f"{name}_ms")]
            if pts:
                ax.plot(*zip(*pts), ls, color=color, marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(subtitle(dt), fontsize=8)
        ax.set_xlabel("sequence length S")
        ax.set_ylabel("time per call (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def peak_rss_growth_mib(run) -> tuple[float, float]:
    """For a memory probe in a fresh process (Linux): the peak resident memory one run() call adds, and the size of
    the tensor it returns, both in MiB. The caller warms up first, so one-off imports and thread start-up are not
    counted."""
    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS counter (VmHWM) to the current RSS
        f.write("5")
    with torch.inference_mode():
        out = run()
    return (status_kib("VmHWM") - before) / 1024, out.numel() * out.element_size() / 2**20


def run_memory_probe(script: str, *args) -> tuple[float, float] | None:
    """Runs a probe script (which prints the two numbers of peak_rss_growth_mib) in a fresh interpreter."""
    try:
        out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                             check=True).stdout.split()
    except subprocess.CalledProcessError as e:
        print(f"memory probe {args}: failed: {e.stderr.strip().splitlines()[-1:]}")
        return None
    return float(out[0]), float(out[1])


def add_scaling_columns(rows) -> None:
    """Adds to each benchmark row longattn's GFLOP/s as a share of its dense GFLOP/s (same S, else the largest dense
    S of that dtype) and how its time grew from S/2. Rows carry dtype, seqlen, longattn_ms/_gflops, dense_gflops."""
    for dt in {r["dtype"] for r in rows}:
        sel = sorted((r for r in rows if r["dtype"] == dt), key=lambda r: r["seqlen"])
        dense = [r for r in sel if r["dense_gflops"]]
        for i, r in enumerate(sel):
            same = r if r["dense_gflops"] else (dense[-1] if dense else None)
            ok = same is not None and r["longattn_gflops"] is not None
            r["of_dense_gflops"] = round(r["longattn_gflops"] / same["dense_gflops"], 3) if ok else None
            r["of_dense_at_s"] = same["seqlen"] if ok else None
            prev = sel[i - 1] if i and sel[i - 1]["seqlen"] * 2 == r["seqlen"] else None
            ok = prev is not None and r["longattn_ms"] and prev["longattn_ms"]
            r["t_over_t_half_s"] = round(r["longattn_ms"] / prev["longattn_ms"], 2) if ok else None
