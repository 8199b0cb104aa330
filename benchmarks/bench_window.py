"""Sliding-window attention on the CPU: longattn vs Hugging Face Longformer vs torch SDPA with a band mask vs
torch flex_attention vs longattn dense, side by side in one run.

Longformer-base shape: B1 H8 D64, attention_window w = 512 (HF's total width, i.e. longattn window=(256, 256)),
S 4096..65536, float32 and bfloat16. Every contestant gets the same q, k, v (the HF module's own projections of the
same hidden states) and is timed with interleaved repetitions (median) in the same process:

  longattn   longattn.sliding_window_attention(q, k, v, window=(256, 256))
  hf         transformers LongformerSelfAttention(attention_window=512) on the hidden states, minus the time of its
             query/key/value linears measured in the same run: attention compared with attention
  sdpa_mask  torch SDPA with an explicit (S, S) boolean band mask (mask built once, outside the timing)
  flex       torch.compile(flex_attention) with a sliding-window BlockMask (built once, outside the timing;
             compilation time is reported, not timed)
  dense      longattn.attention (full S x S): what the window saves

FLOPs count only the visible query-key pairs of the band, edges clipped: 4·B·H·pairs·D ("in-window" GFLOP/s, the
same useful work for every windowed contestant); dense GFLOP/s uses its own S² pairs. Slow or huge peers are capped
(see --hf-max-s, --sdpa-max-s, --dense-max-s); a peer that fails is reported with its reason and skipped.
Writes results/window.{csv,json,png} and measures the peak memory of one longattn call at S=16384 and 65536 in
fresh processes (it must grow like S·D, not S·w or S²).

    python benchmarks/bench_window.py            # the full sweep (several minutes on 2 cores)
    python benchmarks/bench_window.py --quick    # S 4096, 8192
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

# Compile flex_attention in this process: inductor's default pool of compile worker processes keeps running after the
# first compilation and steals cores from the timings that follow it (seen: the first row 1.5-2x slow on 2 cores).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

import longattn  # noqa: E402
from longattn._bench import (add_scaling_columns, first_line, fmt, plot_time_vs_seqlen, run_memory_probe,
                             time_interleaved)  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

B, H, D = 1, 8, 64
ATTENTION_WINDOW = 512             # Hugging Face's attention_window: the total width (even)
HALF = ATTENTION_WINDOW // 2       # longattn window=(HALF, HALF): left + right + 1 = 513 keys
CONTESTANTS = ("longattn", "hf", "sdpa_mask", "flex", "dense")


def band_pairs(S: int, left: int, right: int) -> int:
    """Visible (query, key) pairs of a (left, right) band on an S x S grid, edges clipped: exact."""
    i = torch.arange(S, dtype=torch.int64)
    return int(((i + right).clamp(max=S - 1) - (i - left).clamp(min=0) + 1).sum())


def make_hf_layer(dtype):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
    config = LongformerConfig(hidden_size=H * D, num_attention_heads=H, attention_window=[ATTENTION_WINDOW],
                              num_hidden_layers=1, attention_probs_dropout_prob=0.0)
    return LongformerSelfAttention(config, layer_id=0).eval().to(dtype)


def hf_callables(layer, hidden):
    """(the whole layer, its q/k/v projections alone): all tokens local, no padding -- what LongformerModel passes
    for an unpadded batch without global attention (mask 0 = local; see tests/python/test_longformer_hf.py)."""
    mask = torch.zeros(hidden.shape[:2], dtype=torch.float32)
    none = torch.zeros(hidden.shape[:2], dtype=torch.bool)
    seq_first = hidden.transpose(0, 1)  # the layer projects the (S, B, E) view; time exactly that

    def full():
        return layer(hidden, attention_mask=mask, is_index_masked=none, is_index_global_attn=none,
                     is_global_attn=False)[0]

    def projections():
        return layer.query(seq_first), layer.key(seq_first), layer.value(seq_first)

    return full, projections


def band_mask(S: int) -> torch.Tensor:
    i = torch.arange(S)
    return (i[:, None] - i[None, :]).abs() <= HALF


_FLEX = None


def make_flex(S: int):
    """A compiled flex_attention and its sliding-window BlockMask for length S; raises if flex can't run here."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= HALF

    global _FLEX
    if _FLEX is None:
        # One graph per (S, dtype) of the sweep: let dynamo keep them all rather than fall back to eager flex (which
        # materialises the scores) after its default recompile limit of 8.
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(sliding_window, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cpu")
    return _FLEX, block_mask


def measure(S: int, dtype, args, hf_layers: dict, skipped: dict, verified: set) -> dict:
    name = str(dtype).removeprefix("torch.")
    torch.manual_seed(S)
    hidden = torch.randn(B, S, H * D, dtype=dtype)
    layer = hf_layers[dtype]
    q, k, v = (proj(hidden).view(B, S, H, D) for proj in (layer.query, layer.key, layer.value))
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # BHSD views for torch's APIs
    fns = {"longattn": lambda: longattn.sliding_window_attention(q, k, v, window=(HALF, HALF))}
    outputs = {}  # one output per contestant, for the agreement column (taken outside the timing)
    notes = []

    def available(peer: str, cap: int | None = None) -> bool:
        if (peer, name) in skipped or peer in args.skip:
            return False
        if cap is not None and S > cap:
            notes.append(f"{peer} capped (S > {cap})")
            return False
        return True

    if available("hf", args.hf_max_s):
        hf_full, hf_proj = hf_callables(layer, hidden)
        try:  # a trial call where outputs are compared, or the first time for this dtype (does HF run at all?)
            if S <= args.check_max_s or ("hf", name) not in verified:
                outputs["hf"] = hf_full().view(B, S, H, D)
                verified.add(("hf", name))
            fns["hf_full"], fns["hf_proj"] = hf_full, hf_proj
        except Exception as e:  # noqa: BLE001 -- report any failure of a peer, keep benchmarking the others
            skipped[("hf", name)] = first_line(e)
    if available("sdpa_mask", args.sdpa_max_s):
        mask = band_mask(S)
        fns["sdpa_mask"] = lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    if available("flex"):
        try:
            t0 = time.perf_counter()
            flex, block_mask = make_flex(S)
            outputs["flex"] = flex(qh, kh, vh, block_mask=block_mask).transpose(1, 2)
            notes.append(f"flex compile+first call {time.perf_counter() - t0:.1f} s")
            fns["flex"] = lambda: flex(qh, kh, vh, block_mask=block_mask)
        except Exception as e:  # noqa: BLE001
            skipped[("flex", name)] = first_line(e)
    if available("dense", args.dense_max_s):
        fns["dense"] = lambda: longattn.attention(q, k, v)

    # Agreement with longattn (max |difference|), only where every output is cheap to hold.
    if S <= args.check_max_s:
        outputs["longattn"] = fns["longattn"]()
        if "sdpa_mask" in fns:
            outputs["sdpa_mask"] = fns["sdpa_mask"]().transpose(1, 2)
    ref = outputs.get("longattn")
    agree = {p: float(f"{(o.float() - ref.float()).abs().max().item():.3g}")
             for p, o in outputs.items() if ref is not None and p != "longattn"}

    reps = args.reps if S <= 8192 else max(2, min(args.reps, 3))
    times = dict(zip(fns, time_interleaved(list(fns.values()), reps=reps)))
    if "hf_full" in times:
        times["hf"] = times["hf_full"] - times["hf_proj"]

    band_flops = 4.0 * B * H * band_pairs(S, HALF, HALF) * D
    dense_flops = 4.0 * B * H * S * S * D
    row = {"dtype": name, "seqlen": S, "window": f"({HALF},{HALF})", "hf_attention_window": ATTENTION_WINDOW,
           "band_pairs": band_pairs(S, HALF, HALF), "reps": reps}
    for p in CONTESTANTS:
        t = times.get(p)
        row[f"{p}_ms"] = None if t is None else round(t * 1e3, 3)
        row[f"{p}_gflops"] = None if t is None else round((dense_flops if p == "dense" else band_flops) / t / 1e9, 1)
    row["hf_total_ms"] = None if "hf_full" not in times else round(times["hf_full"] * 1e3, 3)
    row["hf_proj_ms"] = None if "hf_proj" not in times else round(times["hf_proj"] * 1e3, 3)
    for p in ("hf", "sdpa_mask", "flex", "dense"):
        row[f"vs_{p}"] = None if p not in times else round(times[p] / times["longattn"], 2)
    row["max_abs_diff_vs_longattn"] = agree
    row["notes"] = "; ".join(notes)
    return row


def print_table(rows) -> None:
    print("\n  dtype      S | longattn ms  GF/s  of-dense  t(S)/t(S/2) |  HF-attn ms   x |  SDPA-mask ms   x |"
          "  flex ms     x |  dense ms     x")
    for r in rows:
        print(f"{r['dtype']:>8} {r['seqlen']:>6} |"
              f" {fmt(r['longattn_ms'], '.1f', 11)} {fmt(r['longattn_gflops'], '.0f', 5)}"
              f" {fmt(r['of_dense_gflops'], '.2f', 9)} {fmt(r['t_over_t_half_s'], '.2f', 12)} |"
              f" {fmt(r['hf_ms'], '.1f', 11)} {fmt(r['vs_hf'], '.1f', 4)} |"
              f" {fmt(r['sdpa_mask_ms'], '.1f', 13)} {fmt(r['vs_sdpa_mask'], '.1f', 4)} |"
              f" {fmt(r['flex_ms'], '.1f', 8)} {fmt(r['vs_flex'], '.1f', 5)} |"
              f" {fmt(r['dense_ms'], '.1f', 9)} {fmt(r['vs_dense'], '.1f', 5)}")
    print("  (x = that contestant's time / longattn's time: longattn's speed-up; GF/s = in-window GFLOP/s; of-dense ="
          " longattn in-window GFLOP/s / longattn dense GFLOP/s)")


MEMORY_PROBE = r"""
import sys, torch
from longattn._bench import peak_rss_growth_mib

impl, S, H, D, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if impl == "longattn":
    import longattn
    run = lambda q, k, v: longattn.sliding_window_attention(q, k, v, window=(half, half))
else:  # the band-masked SDPA a plain PyTorch user would write (mask built inside the call: it is part of its cost)
    def run(q, k, v):
        i = torch.arange(q.shape[1])
        mask = (i[:, None] - i[None, :]).abs() <= half
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2)
with torch.inference_mode():  # first call pays one-off imports and thread start-up: not what we measure
    run(*(torch.randn(1, 2 * half + 256, H, D) for _ in range(3)))
q, k, v = (torch.randn(1, S, H, D) for _ in range(3))
print(*peak_rss_growth_mib(lambda: run(q, k, v)))
"""


def peak_memory(cases):
    """Peak resident memory one call adds (MiB, output included), float32, in a fresh process per measurement."""
    rows = []
    for impl, S in cases:
        measured = run_memory_probe(MEMORY_PROBE, impl, S, H, D, HALF)
        if measured is None:
            continue
        extra, out_mib = measured
        band_mib = B * H * S * (2 * HALF + 1) * 4 / 2**20  # a materialised fp32 band of scores (what HF allocates)
        square_mib = B * H * S * S * 4 / 2**20             # a materialised fp32 S x S score matrix
        rows.append({"impl": impl, "seqlen": S, "head_dim": D, "extra_peak_mib": round(extra, 1),
                     "output_mib": round(out_mib, 1), "band_scores_mib": round(band_mib, 1),
                     "square_scores_mib": round(square_mib, 1)})
        print(f"memory S={S:<6} {impl:<9} peak growth {extra:8.1f} MiB (output itself {out_mib:.1f} MiB; "
              f"a fp32 band of "
              f"scores would be {band_mib:.0f} MiB, an S x S score matrix {square_mib:.0f} MiB)", flush=True)
    return rows


def plot(rows, path: Path) -> None:
    style = {"longattn": ("tab:red", "-", "longattn sliding_window_attention"),
             "hf": ("tab:green", "-", "HF LongformerSelfAttention (minus projections)"),
             "sdpa_mask": ("tab:blue", "-", "torch SDPA + (S,S) bool band mask"),
             "flex": ("tab:purple", "-", "torch flex_attention (compiled) + BlockMask"),
             "dense": ("tab:gray", "--", "longattn dense attention")}
    plot_time_vs_seqlen(
        rows, style, lambda dt: f"{dt}, B{B} H{H} D{D}, window ({HALF},{HALF}) = HF attention_window {ATTENTION_WINDOW}",
        "sliding-window attention on this CPU (same run, interleaved medians)", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="S 4096 and 8192 only")
    parser.add_argument("--seqlens", type=int, nargs="+", help="override the sequence lengths")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5, help="repetitions up to S=8192 (at most 3 above)")
    parser.add_argument("--hf-max-s", type=int, default=16384, help="largest S for Hugging Face Longformer")
    parser.add_argument("--sdpa-max-s", type=int, default=16384, help="largest S for SDPA with an (S,S) mask")
    parser.add_argument("--dense-max-s", type=int, default=32768, help="largest S for longattn dense")
    parser.add_argument("--check-max-s", type=int, default=8192, help="largest S where outputs are compared")
    parser.add_argument("--skip", nargs="*", default=[], choices=["hf", "sdpa_mask", "flex", "dense"])
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    seqlens = args.seqlens or ([4096, 8192] if args.quick else [4096, 8192, 16384, 32768, 65536])
    dtypes = [getattr(torch, d) for d in args.dtypes]
    RESULTS.mkdir(exist_ok=True)
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        args.skip = list(args.skip) + ["hf"]
    caps = longattn.capabilities()
    print(f"longattn {caps['longattn']} ({caps['cpu_isa_active']}, {caps['threads']} threads), "
          f"torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), transformers {hf_version}")
    print(f"B{B} H{H} D{D}, HF attention_window={ATTENTION_WINDOW} = longattn window=({HALF},{HALF}); caps: HF S <= "
          f"{args.hf_max_s}, SDPA-mask S <= {args.sdpa_max_s}, dense S <= {args.dense_max_s}")
    started = time.time()
    skipped: dict = {}
    verified: set = set()
    rows = []
    with torch.inference_mode():
        hf_layers = {}
        for dt in dtypes:
            torch.manual_seed(0)
            hf_layers[dt] = make_hf_layer(dt) if "hf" not in args.skip else None
            if hf_layers[dt] is None:  # q/k/v still come from the same kind of linears
                hf_layers[dt] = torch.nn.ModuleDict({n: torch.nn.Linear(H * D, H * D) for n in
                                                     ("query", "key", "value")}).to(dt)
        for dt in dtypes:
            for S in seqlens:
                row = measure(S, dt, args, hf_layers, skipped, verified)
                rows.append(row)
                print(f"{row['dtype']:>9} S={S:<6} longattn {row['longattn_ms']:9.1f} ms "
                      f"({row['longattn_gflops']:5.0f} GF/s) | " +
                      " | ".join(f"{p} {row[f'{p}_ms']:.1f} ms" for p in CONTESTANTS[1:] if row[f"{p}_ms"]) +
                      (f" | HF total {row['hf_total_ms']:.1f} ms, projections {row['hf_proj_ms']:.1f} ms"
                       if row["hf_total_ms"] else "") +
                      (f" | max|diff| vs longattn {row['max_abs_diff_vs_longattn']}" if row["max_abs_diff_vs_longattn"]
                       else "") + (f" | {row['notes']}" if row["notes"] else ""), flush=True)
    add_scaling_columns(rows)
    print_table(rows)
    for (peer, dt), why in sorted(skipped.items()):
        print(f"skipped {peer} ({dt}): {why}")
    memory = [] if args.no_memory else peak_memory([("longattn", 16384), ("longattn", 65536), ("sdpa_mask", 16384)])
    meta = {"machine_cpu_isa": caps["cpu_isa_active"], "threads": caps["threads"], "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "transformers": hf_version,
            "shape": {"batch": B, "heads": H, "head_dim": D, "hf_attention_window": ATTENTION_WINDOW,
                      "longattn_window": [HALF, HALF]},
            "caps": {"hf_max_s": args.hf_max_s, "sdpa_max_s": args.sdpa_max_s, "dense_max_s": args.dense_max_s},
            "skipped": {f"{peer}/{dt}": why for (peer, dt), why in skipped.items()},
            "seconds": round(time.time() - started, 1)}
    with open(RESULTS / "window.json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "memory": memory}, f, indent=1)
    with open(RESULTS / "window.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "max_abs_diff_vs_longattn": json.dumps(r["max_abs_diff_vs_longattn"])})
    print(f"wrote {RESULTS / 'window.json'} and window.csv")
    plot(rows, RESULTS / "window.png")


if __name__ == "__main__":
    sys.exit(main())
