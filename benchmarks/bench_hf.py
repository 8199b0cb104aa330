"""Hugging Face models end to end on the CPU, float32: with and without longattn, side by side in one run.

- Llama-style decoder (LlamaModel: 4 layers, hidden 512, 8 heads, 2 KV heads, head dim 64), one sequence of S
  tokens: attn_implementation "sdpa" (transformers' default), "eager" and "longattn"
  (longattn.integrations.transformers.register()); also a batch of 2 left-padded sequences (a 2-D padding mask:
  SDPA then takes a materialised boolean mask, longattn a key padding mask).
- LongformerModel (4 layers, hidden 512, 8 heads, attention_window 512), one sequence of S tokens, two global
  tokens: unmodified vs accelerate(model).
- ReformerModel with transformers' default ReformerConfig (hidden 256, 2 heads of 64, 1 hash, buckets chosen by
  the model, chunk 64) made of 6 LSH layers (1 hash, and 4 hashes as Reformer's papers use for accuracy), the same
  with its default local/LSH alternation, and a wider model
  (4 LSH layers, hidden 512, 8 heads, 2 hashes, 64 buckets, feed-forward 2048): unmodified vs accelerate(model).

Whole forward passes under torch.inference_mode(), random weights (no downloads), median of interleaved
repetitions after a warm-up. The host's CPU flags are printed with the table. Writes results/hf.json.

    python benchmarks/bench_hf.py            # S = 4096
    python benchmarks/bench_hf.py --quick    # S = 2048, fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

import longattn
from longattn._bench import host_line, time_interleaved

RESULTS = pathlib.Path(__file__).parent / "results"


def llama_rows(S, reps):
    import transformers as hf
    from longattn.integrations import transformers as lt
    name = lt.register()
    cfg = hf.LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=max(S, 4096))
    torch.manual_seed(0)
    model = hf.LlamaModel(cfg).eval()
    padded = torch.ones(2, S // 2, dtype=torch.long)
    padded[1, : S // 8] = 0
    rows = []
    for label, ids, mask in ((f"Llama 4L h512 GQA 8/2, B1 S{S}", torch.randint(0, 1024, (1, S)), None),
                             (f"same, B2 S{S // 2} left-padded", torch.randint(0, 1024, (2, S // 2)), padded)):
        def run(impl, ids=ids, mask=mask):
            def fn():
                model.set_attn_implementation(impl)
                with torch.inference_mode():
                    model(ids, attention_mask=mask, use_cache=False)
            return fn
        impls = ["sdpa", name] + (["eager"] if S <= 4096 else [])
        times = time_interleaved([run(i) for i in impls], reps=reps)
        t = dict(zip(impls, times))
        rows.append({"model": label, "baseline": "sdpa", "baseline_s": t["sdpa"], "longattn_s": t[name],
                     "eager_s": t.get("eager"), "speedup": t["sdpa"] / t[name]})
    return rows


def longformer_rows(S, reps):
    import transformers as hf
    from longattn.integrations import transformers as lt
    cfg = hf.LongformerConfig(vocab_size=1024, hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                              num_hidden_layers=4, attention_window=[512] * 4, max_position_embeddings=S + 2,
                              pad_token_id=1)
    torch.manual_seed(0)
    plain = hf.LongformerModel(cfg, add_pooling_layer=False).eval()
    fast = lt.accelerate(hf.LongformerModel(cfg, add_pooling_layer=False).eval())
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(3, 1024, (1, S))
    glob = torch.zeros(1, S, dtype=torch.long)
    glob[0, [0, S // 2]] = 1

    def run(m):
        def fn():
            with torch.inference_mode():
                m(ids, global_attention_mask=glob)
        return fn
    t_plain, t_fast = time_interleaved([run(plain), run(fast)], reps=reps)
    return [{"model": f"Longformer 4L h512 w512, B1 S{S}", "baseline": "unmodified", "baseline_s": t_plain,
             "longattn_s": t_fast, "speedup": t_plain / t_fast}]


def reformer_rows(S, reps):
    import transformers as hf
    from longattn.integrations import transformers as lt
    rows = []
    defaults = dict(vocab_size=1024, axial_pos_embds=False, max_position_embeddings=S, hash_seed=0)
    big = dict(attention_head_size=64, num_attention_heads=8, hidden_size=512, num_hashes=2, num_buckets=64,
               feed_forward_size=2048)
    for label, cfg in ((f"Reformer defaults, 6 LSH layers, S{S}", dict(attn_layers=["lsh"] * 6)),
                       (f"same, 4 hashes, S{S}", dict(attn_layers=["lsh"] * 6, num_hashes=4)),
                       (f"Reformer defaults (local/LSH), S{S}", dict()),
                       (f"Reformer 4 LSH h512 8 heads, S{S}", dict(attn_layers=["lsh"] * 4, **big))):
        cfg = hf.ReformerConfig(**defaults, **cfg)
        torch.manual_seed(0)
        plain = hf.ReformerModel(cfg).eval()
        fast = lt.accelerate(hf.ReformerModel(cfg).eval())
        fast.load_state_dict(plain.state_dict())
        ids = torch.randint(3, 1024, (1, S))

        def run(m):
            def fn():
                with torch.inference_mode():
                    m(ids)
            return fn
        t_plain, t_fast = time_interleaved([run(plain), run(fast)], reps=reps)
        rows.append({"model": label, "baseline": "unmodified", "baseline_s": t_plain, "longattn_s": t_fast,
                     "speedup": t_plain / t_fast})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S = 2048, 3 repetitions")
    ap.add_argument("--seqlen", type=int, default=None)
    args = ap.parse_args()
    import transformers
    S = args.seqlen or (2048 if args.quick else 4096)
    reps = 3 if args.quick else 5
    print(host_line())
    print(f"longattn {longattn.__version__} (CPU kernels {longattn.capabilities()['cpu_isa_active']}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    rows = llama_rows(S, reps) + longformer_rows(S, reps) + reformer_rows(S, reps)
    print("\nwhole forward pass, float32 (seconds; speed-up = baseline / longattn)")
    print(f"{'model':>38} | {'baseline':>10} {'time':>8} | {'longattn':>8} | {'speed-up':>8} | {'eager':>7}")
    for r in rows:
        eager = f"{r['eager_s']:.3f}" if r.get("eager_s") else "-"
        print(f"{r['model']:>38} | {r['baseline']:>10} {r['baseline_s']:8.3f} | {r['longattn_s']:8.3f} | "
              f"{r['speedup']:7.2f}x | {eager:>7}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hf.json").write_text(json.dumps({"host": host_line(), "seqlen": S, "rows": rows}, indent=1))
    print(f"wrote {RESULTS / 'hf.json'}")


if __name__ == "__main__":
    main()
