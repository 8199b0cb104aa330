"""KV-cache decoding and variable-length prefill on the CPU: longattn vs torch SDPA, side by side in one run, and
against the time to read the cache once (the bandwidth limit of decoding).

Decode (attention_with_kvcache, one new query token per sequence, the cache already filled):
  B1 Hq32 Hk8 D128 (grouped-query: Llama-3-8B's attention shape), Sk 4096 .. 131072, float32 and bfloat16;
  B8 Hq8 Hk8 D64, Sk 8192.
Contestants, on the same cache:
  longattn         attention_with_kvcache on the contiguous (B, S, Hk, D) cache (num_splits=0: chosen)
  longattn paged   the same tokens in a paged cache (page size 16, a shuffled block table)
  sdpa             torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True) on BHSD views of the
                   contiguous cache (its fastest form: no copy)
  read once        k_cache.sum() + v_cache.sum(): reading every cache byte once, what decoding cannot beat
"of bandwidth" = read-once time / longattn time.

Varlen prefill (varlen_attention, causal, H8 D64): B8 sequences with lengths uniform in 512..4096 (seeded), packed;
against SDPA on the batch padded to the longest sequence with a boolean (causal & key padding) mask, and against
longattn.attention with key_padding_mask on the same padded batch.

Median of interleaved repetitions; the machine's CPU flags are printed with each table. Writes results/decode.json.

    python benchmarks/bench_decode.py            # everything (needs ~3 GiB of memory at Sk 131072)
    python benchmarks/bench_decode.py --quick    # Sk 4096 and 32768, and the varlen case
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random

import torch
import torch.nn.functional as F

import longattn
from longattn._bench import fmt, host_line, time_interleaved

RESULTS = pathlib.Path(__file__).parent / "results"


def paged_copy(kc: torch.Tensor, page: int, seed: int = 0):
    """The tokens of a contiguous (B, S, H, D) cache in a paged cache with a shuffled block table."""
    B, S, H, D = kc.shape
    per_seq = S // page
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(B * per_seq, generator=g).view(B, per_seq).to(torch.int32)
    paged = torch.empty(B * per_seq, page, H, D, dtype=kc.dtype)
    paged[table.view(-1).long()] = kc.reshape(B * per_seq, page, H, D)
    return paged, table


def decode_case(B, Hq, Hk, D, Sk, dtype, reps, page=16):
    q = torch.randn(B, 1, Hq, D, dtype=dtype)
    kc, vc = (torch.randn(B, Sk, Hk, D, dtype=dtype) for _ in range(2))
    kp, table = paged_copy(kc, page)
    vp, _ = paged_copy(vc, page)
    seqlens = torch.full((B,), Sk, dtype=torch.int32)
    qh, kh, vh = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)
    fns = [lambda: longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens),
           lambda: longattn.attention_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table),
           lambda: F.scaled_dot_product_attention(qh, kh, vh, enable_gqa=Hq != Hk),
           lambda: kc.sum() + vc.sum()]
    t_la, t_paged, t_sdpa, t_read = time_interleaved(fns, reps=reps)
    want = F.scaled_dot_product_attention(qh.float(), kh.float(), vh.float(), enable_gqa=Hq != Hk).transpose(1, 2)
    err = (longattn.attention_with_kvcache(q, kc, vc, cache_seqlens=seqlens).float() - want).abs().max().item()
    cache_gb = 2 * kc.numel() * kc.element_size() / 1e9
    return {"case": f"B{B} Hq{Hq} Hk{Hk} D{D}", "dtype": str(dtype).removeprefix("torch."), "seqlen_k": Sk,
            "longattn_ms": t_la * 1e3, "paged_ms": t_paged * 1e3, "sdpa_ms": t_sdpa * 1e3, "read_once_ms": t_read * 1e3,
            "speedup_vs_sdpa": t_sdpa / t_la, "paged_of_contiguous": t_la / t_paged,
            "of_bandwidth": t_read / t_la, "longattn_gb_s": cache_gb / t_la, "read_once_gb_s": cache_gb / t_read,
            "max_abs_err_vs_sdpa_f32": err}


def varlen_case(dtype, reps, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(512, 4096) for _ in range(8)]
    H, D, S = 8, 64, max(lengths)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    q, k, v = (torch.randn(int(cu[-1]), H, D, dtype=dtype) for _ in range(3))
    padded = [torch.zeros(8, S, H, D, dtype=dtype) for _ in range(3)]
    mask = torch.zeros(8, S, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for t, src in zip(padded, (q, k, v)):
            t[b, :n] = src[int(cu[b]):int(cu[b + 1])]
        mask[b, :n] = True
    qp, kp, vp = padded
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    sdpa_mask = (causal[None] & mask[:, None, :])[:, None]  # (B, 1, S, S)
    fns = [lambda: longattn.varlen_attention(q, k, v, cu, cu, max_seqlen_q=S, max_seqlen_k=S, causal=True),
           lambda: F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                                  attn_mask=sdpa_mask),
           lambda: longattn.attention(qp, kp, vp, causal=True, key_padding_mask=mask)]
    t_var, t_sdpa, t_pad = time_interleaved(fns, reps=reps)
    return {"case": f"B8 H{H} D{D} causal, lengths {min(lengths)}..{max(lengths)} (sum {sum(lengths)})",
            "dtype": str(dtype).removeprefix("torch."), "varlen_ms": t_var * 1e3, "sdpa_padded_ms": t_sdpa * 1e3,
            "longattn_padded_ms": t_pad * 1e3, "speedup_vs_sdpa_padded": t_sdpa / t_var}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Sk 4096 and 32768 only")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(host_line())
    print(f"longattn {longattn.__version__}, CPU kernels {longattn.capabilities()['cpu_isa_active']}, "
          f"{longattn.get_num_threads()} threads; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    seqlens = [4096, 32768] if args.quick else [4096, 16384, 32768, 65536, 131072]
    rows = []
    print("\ndecode: one query token against a filled cache (ms per call; speed-ups vs SDPA)")
    print(f"{'case':>20} {'dtype':>9} {'Sk':>7} | {'longattn':>9} {'paged16':>9} {'sdpa':>9} {'read once':>9} | "
          f"{'vs sdpa':>7} {'paged/contig':>12} {'of bandwidth':>12} {'GB/s':>6}")
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for Sk in seqlens:
                rows.append(decode_case(1, 32, 8, 128, Sk, dtype, args.reps))
            rows.append(decode_case(8, 8, 8, 64, 8192, dtype, args.reps))
        for r in rows:
            print(f"{r['case']:>20} {r['dtype']:>9} {r['seqlen_k']:>7} | {fmt(r['longattn_ms'], '.2f', 9)} "
                  f"{fmt(r['paged_ms'], '.2f', 9)} {fmt(r['sdpa_ms'], '.2f', 9)} {fmt(r['read_once_ms'], '.2f', 9)} | "
                  f"{r['speedup_vs_sdpa']:6.2f}x {r['paged_of_contiguous']:11.2f}  {r['of_bandwidth']:11.2f}  "
                  f"{r['longattn_gb_s']:5.1f}")
        print("\nvarlen prefill (ms per call)")
        var_rows = [varlen_case(dtype, max(3, args.reps // 2)) for dtype in (torch.float32, torch.bfloat16)]
        for r in var_rows:
            print(f"  {r['case']} {r['dtype']}: varlen {r['varlen_ms']:.1f} | SDPA padded + mask {r['sdpa_padded_ms']:.1f} "
                  f"({r['speedup_vs_sdpa_padded']:.2f}x) | longattn padded + key_padding_mask "
                  f"{r['longattn_padded_ms']:.1f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps({"host": host_line(), "decode": rows, "varlen": var_rows},
                                                     indent=1))
    print(f"wrote {RESULTS / 'decode.json'}")


if __name__ == "__main__":
    main()
