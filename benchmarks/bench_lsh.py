"""Reformer LSH attention on the CPU: longattn vs Hugging Face Reformer vs reformer-pytorch vs longattn dense, side by
side in one run.

Shape: B1 H8 D64, 4 hash rounds, chunk_length 64, one chunk back and none ahead (Reformer's defaults), n_buckets =
S/64 (the paper's choice: about one chunk per bucket), non-causal, S 4096..65536, float32 (--dtypes bfloat16 on
request: every contestant runs it, but HF then hashes and scores in bfloat16, so it is no longer longattn's function).
Every contestant gets the same inputs -- qk, v are the HF module's own projections of the same hidden states -- and is
timed with interleaved repetitions (median) in the same process:

  longattn  longattn.lsh_attention(qk, v, n_hashes=4, n_buckets=S//64, chunk_length=64, seed=0)
  hf        transformers LSHSelfAttention (num_hashes=4, num_buckets=S//64, lsh_attn_chunk_length=64,
            lsh_num_chunks_before=1, after=0, hash_seed=0) on the hidden states, minus the time of its query_key and
            value linears measured in the same run: attention compared with attention. With hash_seed=0 HF draws the
            same rotations as longattn's seed=0, so the two compute the same function; their outputs and
            buckets are compared where S <= --check-max-s.
  rp        reformer-pytorch's LSHAttention(bucket_size=64, n_hashes=4, causal=False) (lucidrains; optional, and
            installed so that it cannot replace torch: pip install --no-deps reformer-pytorch einops
            axial-positional-embedding local-attention product-key-memory hyper-connections colt5-attention --
            tried with 1.4.4). Heads folded into the batch:
            qk, v as (B*H, S, D), prepared outside the timing. Its n_buckets is S // bucket_size = S/64 and it looks
            one chunk back, so the work has the same shape (4 rounds, 64 queries x 128 keys per chunk), but it is not
            the same function: its keys are unit-norm like HF's (RMS-norm / sqrt(D)) but its scores get an extra
            1/sqrt(D), its self score is -5e4, and one set of rotations is shared by all heads, drawn from the
            global RNG each call. Timed, not compared.
  dense     longattn.attention(qk, qk, v) (full S x S): what hashing saves. Capped by --dense-max-s.

FLOPs: longattn's "in-chunk" GFLOP/s counts the query-key pairs it scores,
4·B·H·n_hashes·S·(chunks_before + 1 + chunks_after)·chunk_length·D (hashing and sorting not counted); dense GFLOP/s
counts 4·B·H·S²·D. "of-dense" is the first divided by the second (same S, else the largest dense S): how much of the
dense kernel's arithmetic rate the chunked kernel keeps. t(S)/t(S/2) is longattn's time growth per doubling (2.0 =
linear).
Slow peers are capped by size (--hf-max-s, --rp-max-s) and by time: a peer whose trial call took more than
--peer-max-call-s seconds is not run at larger S. A peer that fails is reported with its reason and skipped.
Writes results/lsh.{csv,json,png} and measures the peak memory of one call in fresh processes (longattn at S=16384
and 65536, HF at 16384): it must grow like S·D, not S·chunk per round.

    python benchmarks/bench_lsh.py            # the full sweep (long on 2 cores: HF alone takes seconds per call)
    python benchmarks/bench_lsh.py --quick    # S 4096, 8192
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch

import longattn
from longattn._bench import (add_scaling_columns, cuda_time, first_line, fmt, host_line, plot_time_vs_seqlen,
                             run_memory_probe, time_interleaved)

RESULTS = Path(__file__).resolve().parent / "results"

B, H, D = 1, 8, 64
N_HASHES = 4
CHUNK = 64
BEFORE, AFTER = 1, 0
SEED = 0
CONTESTANTS = ("longattn", "hf", "rp", "dense")
PEER_NAMES = {"hf": "HF LSHSelfAttention", "rp": "reformer-pytorch LSHAttention", "dense": "longattn dense"}


BUCKETS = {"mode": "paper"}  # --buckets


def hf_n_buckets(S: int, chunk: int, max_positions: int):
    """Hugging Face Reformer's own choice (LSHSelfAttention._set_num_buckets): 2^floor(log2(2 S / chunk)) buckets,
    factorized into [2^(k//2), 2^(k - k//2)] past 2 * max(sqrt(max_positions / chunk), chunk)."""
    k = (2 * (S // chunk)).bit_length() - 1
    limit = 2 * max(int((max_positions // chunk) ** 0.5), chunk)
    return [2 ** (k // 2), 2 ** (k - k // 2)] if 2 ** k > limit else 2 ** k


def n_buckets_for(S: int):
    """--buckets paper: S/64 buckets (about one chunk of items per bucket and round), kept even (argmax over xR
    and -xR). --buckets hf: Hugging Face's own choice for a model of max_position_embeddings = S (factorized from
    S = 8192 at chunk 64)."""
    if BUCKETS["mode"] == "hf":
        return hf_n_buckets(S, CHUNK, S)
    return max(2, (S // CHUNK) // 2 * 2)


def nb_text(nb) -> str:
    return str(nb) if isinstance(nb, int) else "x".join(map(str, nb))


def in_chunk_flops(S: int) -> float:
    return 4.0 * B * H * N_HASHES * S * (BEFORE + 1 + AFTER) * CHUNK * D


def make_hf_layer(dtype):
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention
    config = ReformerConfig(attention_head_size=D, num_attention_heads=H, hidden_size=H * D, num_hashes=N_HASHES,
                            num_buckets=2, lsh_attn_chunk_length=CHUNK, lsh_num_chunks_before=BEFORE,
                            lsh_num_chunks_after=AFTER, is_decoder=False, hash_seed=SEED,
                            lsh_attention_probs_dropout_prob=0.0, attn_layers=["lsh"])
    return LSHSelfAttention(config).eval().to(dtype)   # num_buckets is set per S (measure())


def make_rp():
    from reformer_pytorch import LSHAttention
    return LSHAttention(bucket_size=CHUNK, n_hashes=N_HASHES, causal=False).eval()


def measure(S: int, dtype, args, state: dict, skipped: dict) -> dict:
    name = str(dtype).removeprefix("torch.")
    nb = n_buckets_for(S)
    torch.manual_seed(S)
    hidden = torch.randn(B, S, H * D, dtype=dtype)
    layer = state["hf_layer"][dtype]
    layer.num_buckets = nb                              # what LSHSelfAttention reads at each call
    qk = layer.query_key(hidden).view(B, S, H, D)       # HF's head split: (B, S, H*D) -> (B, S, H, D), BSHD
    v = layer.value(hidden).view(B, S, H, D)
    notes = []

    def run_longattn():
        return longattn.lsh_attention(qk, v, n_hashes=N_HASHES, n_buckets=nb, chunk_length=CHUNK,
                                      chunks_before=BEFORE, chunks_after=AFTER, seed=SEED)

    fns = {}
    trial = {}  # contestant -> (output of its trial call, seconds)

    def try_trial(peer: str, fn) -> bool:
        """One untimed call: does it run here, and how slow is it? Records a failure in `skipped`."""
        try:
            t0 = time.perf_counter()
            out = fn()
            trial[peer] = (out, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 -- report any failure of a contestant, keep benchmarking the others
            skipped[(peer, name)] = first_line(e)
            return False
        if peer != "longattn" and trial[peer][1] > args.peer_max_call_s:
            state["too_slow"][(peer, name)] = (S, trial[peer][1])
        return True

    def available(peer: str, cap: int | None = None) -> bool:
        if (peer, name) in skipped or peer in args.skip:
            return False
        if cap is not None and S > cap:
            notes.append(f"{peer} capped (S > {cap})")
            return False
        slow = state["too_slow"].get((peer, name))
        if slow is not None and S > slow[0]:
            notes.append(f"{peer} skipped (its call took {slow[1]:.0f} s at S={slow[0]})")
            return False
        return True

    if try_trial("longattn", lambda: longattn.lsh_attention(
            qk, v, n_hashes=N_HASHES, n_buckets=nb, chunk_length=CHUNK, chunks_before=BEFORE, chunks_after=AFTER,
            seed=SEED, return_buckets=S <= args.check_max_s)):
        fns["longattn"] = run_longattn
    if available("hf", args.hf_max_s):
        def hf_full():
            return layer(hidden).hidden_states

        def hf_proj():  # exactly the two linears LSHSelfAttention.forward applies to hidden_states
            return layer.query_key(hidden), layer.value(hidden)

        if try_trial("hf", lambda: layer(hidden)):
            fns["hf_full"], fns["hf_proj"] = hf_full, hf_proj
    if available("rp", args.rp_max_s):
        if "rp" not in state:
            try:
                state["rp"] = make_rp()
            except Exception as e:  # noqa: BLE001
                skipped[("rp", name)] = first_line(e)
        if "rp" in state:
            rp = state["rp"]
            qk_rp = qk.transpose(1, 2).reshape(B * H, S, D).contiguous()   # heads folded into the batch
            v_rp = v.transpose(1, 2).reshape(B * H, S, D).contiguous()
            if try_trial("rp", lambda: rp(qk_rp, v_rp)[0]):
                fns["rp"] = lambda: rp(qk_rp, v_rp)[0]
    if available("dense", args.dense_max_s):
        fns["dense"] = lambda: longattn.attention(qk, qk, v)

    # Agreement of longattn with HF (same rotations, so the same function): max |difference| and how many
    # (head, round, token) buckets differ. A near-tie in argmax(x R) can flip in float32 either way (a handful in
    # 10^5 hashes); a flipped bucket moves a few rows, so a large max|diff| with a few mismatches is that, not a bug.
    agree = {}
    if S <= args.check_max_s and "longattn" in trial and "hf" in trial:
        ours, ours_b = trial["longattn"][0]
        hf_out = trial["hf"][0]
        per_round = nb if isinstance(nb, int) else math.prod(nb)  # no padding here: HF's offsets are r * num_buckets
        hf_b = hf_out.buckets - per_round * torch.arange(N_HASHES).view(1, 1, -1, 1)
        mismatch = int((hf_b != ours_b).sum())
        diff = (ours.float() - hf_out.hidden_states.view(B, S, H, D).float()).abs()
        agree = {"hf_max_abs_diff": float(f"{diff.max().item():.3g}"),
                 "hf_rows_over_1e-4": int((diff.amax(-1) > 1e-4).sum()),
                 "hf_bucket_mismatches": mismatch, "hashes": int(ours_b.numel())}
    if agree and dtype != torch.float32:
        notes.append(f"HF in {name} hashes and scores in {name} (longattn: float32 scores), so it is not the same "
                     "function: its agreement numbers are indicative only")
    trial.clear()

    reps = args.reps if S <= 8192 else max(2, min(args.reps, 3))
    times = dict(zip(fns, time_interleaved(list(fns.values()), reps=reps))) if fns else {}
    if "hf_full" in times:
        times["hf"] = times["hf_full"] - times["hf_proj"]

    row = {"dtype": name, "seqlen": S, "n_buckets": nb, "n_hashes": N_HASHES, "chunk_length": CHUNK,
           "chunks_before": BEFORE, "chunks_after": AFTER, "reps": reps}
    for p in CONTESTANTS:
        t = times.get(p)
        row[f"{p}_ms"] = None if t is None else round(t * 1e3, 3)
    t_ours, t_dense = times.get("longattn"), times.get("dense")
    row["longattn_gflops"] = None if t_ours is None else round(in_chunk_flops(S) / t_ours / 1e9, 1)
    row["dense_gflops"] = None if t_dense is None else round(4.0 * B * H * S * S * D / t_dense / 1e9, 1)
    row["hf_total_ms"] = None if "hf_full" not in times else round(times["hf_full"] * 1e3, 3)
    row["hf_proj_ms"] = None if "hf_proj" not in times else round(times["hf_proj"] * 1e3, 3)
    for p in CONTESTANTS[1:]:
        row[f"vs_{p}"] = None if p not in times or t_ours is None else round(times[p] / t_ours, 2)
    row["agreement_vs_hf"] = agree or None
    row["notes"] = "; ".join(notes)
    return row


def print_table(rows) -> None:
    print("\n  dtype      S    nb | longattn ms  GF/s  of-dense  t(S)/t(S/2) |  HF-attn ms     x |"
          "  reformer-pytorch ms     x |   dense ms     x")
    for r in rows:
        print(f"{r['dtype']:>8} {r['seqlen']:>6} {nb_text(r['n_buckets']):>5} |"
              f" {fmt(r['longattn_ms'], '.1f', 11)} {fmt(r['longattn_gflops'], '.0f', 5)}"
              f" {fmt(r['of_dense_gflops'], '.2f', 9)} {fmt(r['t_over_t_half_s'], '.2f', 12)} |"
              f" {fmt(r['hf_ms'], '.1f', 11)} {fmt(r['vs_hf'], '.1f', 5)} |"
              f" {fmt(r['rp_ms'], '.1f', 20)} {fmt(r['vs_rp'], '.1f', 5)} |"
              f" {fmt(r['dense_ms'], '.1f', 10)} {fmt(r['vs_dense'], '.1f', 5)}")
    print("  (x = that contestant's time / longattn's time: longattn's speed-up; GF/s = in-chunk GFLOP/s; of-dense ="
          " longattn in-chunk GFLOP/s / longattn dense GFLOP/s; nb = n_buckets)")


MEMORY_PROBE = r"""
import sys, torch
from longattn._bench import peak_rss_growth_mib

impl, S, H, D, n_hashes, chunk, seed = sys.argv[1], *map(int, sys.argv[2:8])
factorized = sys.argv[8] == "hf"
def buckets(S):
    if not factorized:
        return max(2, (S // chunk) // 2 * 2)
    k = (2 * (S // chunk)).bit_length() - 1
    return [2 ** (k // 2), 2 ** (k - k // 2)] if 2 ** k > 2 * max(int((S // chunk) ** 0.5), chunk) else 2 ** k
if impl == "longattn":
    import longattn
    def make(S):
        qk, v = torch.randn(1, S, H, D), torch.randn(1, S, H, D)
        n = buckets(S)
        return lambda: longattn.lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=n, chunk_length=chunk, seed=seed)
else:  # HF's layer on hidden states: its own query_key/value projections are part of this call
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention
    layer = LSHSelfAttention(ReformerConfig(
        attention_head_size=D, num_attention_heads=H, hidden_size=H * D, num_hashes=n_hashes, num_buckets=2,
        lsh_attn_chunk_length=chunk, lsh_num_chunks_before=1, lsh_num_chunks_after=0, hash_seed=seed,
        lsh_attention_probs_dropout_prob=0.0, attn_layers=["lsh"])).eval()
    def make(S):
        hidden = torch.randn(1, S, H * D)
        layer.num_buckets = buckets(S)
        return lambda: layer(hidden).hidden_states
with torch.inference_mode():  # first call pays one-off imports and thread start-up: not what we measure
    make(4 * chunk)()
    run = make(S)
print(*peak_rss_growth_mib(run))
"""


def peak_memory(cases):
    """Peak resident memory one call adds (MiB, output included), float32, in a fresh process per measurement."""
    rows = []
    for impl, S in cases:
        measured = run_memory_probe(MEMORY_PROBE, impl, S, H, D, N_HASHES, CHUNK, SEED, BUCKETS["mode"])
        if measured is None:
            continue
        extra, out_mib = measured
        # what a chunked implementation that materialises one round-set of scores (HF, reformer-pytorch) allocates:
        # the (n_hashes*S) x (chunks_before+1+chunks_after)*chunk fp32 score block
        scores_mib = B * H * N_HASHES * S * (BEFORE + 1 + AFTER) * CHUNK * 4 / 2**20
        inputs_mib = B * S * H * D * 4 / 2**20                  # one (B, S, H, D) fp32 tensor: qk, v or out
        rows.append({"impl": impl, "seqlen": S, "head_dim": D, "extra_peak_mib": round(extra, 1),
                     "output_mib": round(out_mib, 1), "chunk_scores_mib": round(scores_mib, 1),
                     "one_bshd_tensor_mib": round(inputs_mib, 1)})
        what = " (includes its query_key/value projections)" if impl == "hf" else ""
        print(f"memory S={S:<6} {impl:<9} peak growth {extra:8.1f} MiB{what} (output itself {out_mib:.1f} MiB; "
              f"the fp32 chunk scores of all rounds would be {scores_mib:.0f} MiB)", flush=True)
    return rows


def plot(rows, path: Path) -> None:
    style = {"longattn": ("tab:red", "-", "longattn lsh_attention"),
             "hf": ("tab:green", "-", "HF LSHSelfAttention (minus projections)"),
             "rp": ("tab:blue", "-", "reformer-pytorch LSHAttention"),
             "dense": ("tab:gray", "--", "longattn dense attention")}
    plot_time_vs_seqlen(
        rows, style,
        lambda dt: f"{dt}, B{B} H{H} D{D}, {N_HASHES} hashes, chunk {CHUNK} ({BEFORE} back, {AFTER} ahead), " +
                   (f"n_buckets = S/{CHUNK}" if BUCKETS["mode"] == "paper" else "HF's factorized n_buckets"),
        "Reformer LSH attention on this CPU (same run, interleaved medians)", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="S 4096 and 8192 only")
    parser.add_argument("--seqlens", type=int, nargs="+", help="override the sequence lengths (multiples of 128)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5, help="repetitions up to S=8192 (at most 3 above)")
    parser.add_argument("--hf-max-s", type=int, default=16384, help="largest S for Hugging Face Reformer")
    parser.add_argument("--rp-max-s", type=int, default=16384, help="largest S for reformer-pytorch")
    parser.add_argument("--peer-max-call-s", type=float, default=15.0,
                        help="a peer whose trial call takes longer is not run at larger S")
    parser.add_argument("--dense-max-s", type=int, default=32768, help="largest S for longattn dense")
    parser.add_argument("--check-max-s", type=int, default=8192, help="largest S where outputs are compared")
    parser.add_argument("--skip", nargs="*", default=[], choices=["hf", "rp", "dense"])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-s", type=int, nargs="+", default=[16384, 65536],
                        help="S of the longattn memory probes (HF: the first)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where lsh.{csv,json,png} go")
    parser.add_argument("--buckets", choices=["paper", "hf"], default="paper",
                        help="n_buckets = S/64 (paper), or Hugging Face's own choice, factorized from S = 8192 (hf); "
                             "hf writes lsh_hf_buckets.{csv,json,png}")
    parser.add_argument("--cuda-only", action="store_true", help="only the CUDA section (needs a GPU)")
    parser.add_argument("--cuda-hf-max-s", type=int, default=65536, help="largest S for HF in the CUDA section")
    args = parser.parse_args()
    BUCKETS["mode"] = args.buckets
    if torch.cuda.is_available():
        cuda_section(args)
    else:
        print("CUDA section: skipped (no CUDA GPU on this machine)")
    if args.cuda_only:
        return
    stem = "lsh" if args.buckets == "paper" else "lsh_hf_buckets"
    seqlens = args.seqlens or ([4096, 8192] if args.quick else [4096, 8192, 16384, 32768, 65536])
    bad = [S for S in seqlens if S % (2 * CHUNK)]
    if bad:
        parser.error(f"--seqlens: {bad} not multiples of {2 * CHUNK} (chunk_length, and reformer-pytorch's 2x)")
    dtypes = [getattr(torch, d) for d in args.dtypes]
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        args.skip = list(args.skip) + ["hf"]
    try:
        from importlib.metadata import version
        rp_version = version("reformer-pytorch")
    except Exception:  # noqa: BLE001
        rp_version = None
    caps = longattn.capabilities()
    print(host_line())
    print(f"longattn {caps['longattn']} ({caps['cpu_isa_active']}, {caps['threads']} threads), "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), "
          f"transformers {hf_version}, reformer-pytorch {rp_version}")
    print(f"B{B} H{H} D{D}, n_hashes={N_HASHES}, chunk_length={CHUNK}, chunks_before={BEFORE}, "
          f"chunks_after={AFTER}, n_buckets={'S/' + str(CHUNK) if args.buckets == 'paper' else 'HF choice'}; "
          f"caps: HF S <= {args.hf_max_s}, reformer-pytorch S <= "
          f"{args.rp_max_s}, peers' trial call <= {args.peer_max_call_s:g} s, dense S <= {args.dense_max_s}")
    started = time.time()
    skipped: dict = {}
    state: dict = {"hf_layer": {}, "too_slow": {}}
    rows = []
    with torch.inference_mode():
        for dt in dtypes:
            torch.manual_seed(0)
            layer = None
            if "hf" not in args.skip:
                try:
                    layer = make_hf_layer(dt)
                except Exception as e:  # noqa: BLE001
                    skipped[("hf", str(dt).removeprefix("torch."))] = first_line(e)
            if layer is None:  # qk and v still come from the same kind of bias-free linears
                layer = torch.nn.ModuleDict({n: torch.nn.Linear(H * D, H * D, bias=False)
                                             for n in ("query_key", "value")}).to(dt)
                layer = _Projections(layer)
            state["hf_layer"][dt] = layer
        for dt in dtypes:
            for S in seqlens:
                row = measure(S, dt, args, state, skipped)
                rows.append(row)
                print(f"{row['dtype']:>9} S={S:<6} " +
                      " | ".join(f"{p} {row[f'{p}_ms']:.1f} ms" for p in CONTESTANTS if row[f"{p}_ms"]) +
                      (f" | longattn {row['longattn_gflops']:.0f} in-chunk GF/s" if row["longattn_gflops"] else "") +
                      (f" | HF total {row['hf_total_ms']:.1f} ms, projections {row['hf_proj_ms']:.1f} ms"
                       if row["hf_total_ms"] else "") +
                      (f" | vs HF {row['agreement_vs_hf']}" if row["agreement_vs_hf"] else "") +
                      (f" | {row['notes']}" if row["notes"] else ""), flush=True)
    add_scaling_columns(rows)
    print_table(rows)
    for (peer, dt), why in sorted(skipped.items()):
        print(f"skipped {PEER_NAMES.get(peer, peer)} ({dt}): {why}")
    memory = [] if args.no_memory else peak_memory(
        [("longattn", S) for S in args.memory_s] + ([] if "hf" in args.skip else [("hf", args.memory_s[0])]))
    meta = {"machine_cpu_isa": caps["cpu_isa_active"], "threads": caps["threads"], "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "transformers": hf_version,
            "reformer_pytorch": rp_version,
            "shape": {"batch": B, "heads": H, "head_dim": D, "n_hashes": N_HASHES, "chunk_length": CHUNK,
                      "chunks_before": BEFORE, "chunks_after": AFTER,
                      "n_buckets": f"S/{CHUNK}" if args.buckets == "paper" else "Hugging Face's choice", "seed": SEED},
            "caps": {"hf_max_s": args.hf_max_s, "rp_max_s": args.rp_max_s, "peer_max_call_s": args.peer_max_call_s,
                     "dense_max_s": args.dense_max_s},
            "skipped": {f"{peer}/{dt}": why for (peer, dt), why in skipped.items()},
            "too_slow": {f"{peer}/{dt}": {"seqlen": s, "seconds": round(t, 1)}
                         for (peer, dt), (s, t) in state["too_slow"].items()},
            "seconds": round(time.time() - started, 1)}
    with open(results / f"{stem}.json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "memory": memory}, f, indent=1)
    with open(results / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "agreement_vs_hf": json.dumps(r["agreement_vs_hf"]), "n_buckets": nb_text(r["n_buckets"])})
    print(f"wrote {results / (stem + '.json')} and {stem}.csv")
    plot(rows, results / f"{stem}.png")


def cuda_section(args) -> None:
    """longattn's CUDA LSH kernels vs Hugging Face LSHSelfAttention on the same GPU, with HF's own (factorized) bucket
    choice at every S: float16 / bfloat16 / float32 for longattn, float32 for HF (its float16 path changes the mask
    constants), HF timed on the hidden states minus its two projections as on the CPU. CUDA events, median of 20.
    Writes results/lsh_cuda.json."""
    seqlens = args.seqlens or ([4096, 16384] if args.quick else [4096, 8192, 16384, 32768, 65536, 131072])
    print(f"CUDA: {torch.cuda.get_device_name()}; B{B} H{H} D{D}, n_hashes={N_HASHES}, chunk_length={CHUNK}, "
          "HF's bucket choice")
    rows = []
    with torch.inference_mode():
        layer = make_hf_layer(torch.float32).cuda()
        for S in seqlens:
            nb = hf_n_buckets(S, CHUNK, S)
            torch.manual_seed(S)
            hidden = torch.randn(B, S, H * D, device="cuda")
            layer.num_buckets = nb
            qk32 = layer.query_key(hidden).view(B, S, H, D)
            v32 = layer.value(hidden).view(B, S, H, D)
            row = {"seqlen": S, "n_buckets": nb_text(nb)}
            for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
                qk, v = qk32.to(dt), v32.to(dt)
                rot = longattn.lsh_rotations(H, D, N_HASHES, nb, seed=SEED, device="cuda")
                row[f"longattn_{name}_ms"] = 1e3 * cuda_time(lambda: longattn.lsh_attention(
                    qk, v, n_hashes=N_HASHES, n_buckets=nb, chunk_length=CHUNK, chunks_before=BEFORE,
                    chunks_after=AFTER, rotations=rot))
            if S <= args.cuda_hf_max_s:
                total = 1e3 * cuda_time(lambda: layer(hidden))
                proj = 1e3 * cuda_time(lambda: (layer.query_key(hidden), layer.value(hidden)))
                row["hf_float32_ms"] = total - proj
                row["vs_hf_float32"] = row["hf_float32_ms"] / row["longattn_float32_ms"]
                row["vs_hf_bfloat16"] = row["hf_float32_ms"] / row["longattn_bfloat16_ms"]
            rows.append(row)
            print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
    for prev, row in zip(rows, rows[1:]):  # time growth per doubling of S (2.0 = linear)
        if row["seqlen"] == 2 * prev["seqlen"]:
            row["bfloat16_t_over_t_half_s"] = round(row["longattn_bfloat16_ms"] / prev["longattn_bfloat16_ms"], 2)
    out = Path(args.results_dir) / "lsh_cuda.json"
    out.write_text(json.dumps({"host": host_line(), "gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print(f"wrote {out}")


class _Projections(torch.nn.Module):
    """Stand-in for the HF layer when transformers is missing: just its two projections (num_buckets ignored)."""

    def __init__(self, linears):
        super().__init__()
        self.query_key, self.value = linears["query_key"], linears["value"]
        self.num_buckets = None


if __name__ == "__main__":
    sys.exit(main())
