"""Readable float64 oracles of docs/semantics.md, for tests. Written for reading, not speed: every mask is explicit."""

from __future__ import annotations

import math

import torch


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                     scale: float | None = None, compute_dtype: torch.dtype = torch.float64, softcap: float = 0.0,
                     sinks: torch.Tensor | None = None, p_dtype: torch.dtype | None = None):
    """softmax(scale * q kᵀ + mask) v, BSHD layout, GQA by repeating kv heads.

    visible: bool, broadcastable to (B, Hq, Sq, Sk). Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq)) in
    compute_dtype: float64 for the oracle; the inputs' own dtype measures how much error plain PyTorch makes
    doing the same math in that precision (the yardstick the tests hold longattn to).
    softcap > 0: each scaled score s becomes softcap * tanh(s / softcap) before the mask. sinks (Hq,): one extra logit
    per query head in every row's denominator, carrying no value (lse includes it).
    A row with no visible key gets out = 0 and lse = -inf (lse = its sink with sinks).
    p_dtype: round the probabilities to this dtype before they multiply v (what 16-bit tile kernels do); None = keep
    them in compute_dtype.
    """
    B, Sq, Hq, D = q.shape
    Hk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q64 = q.to(compute_dtype).transpose(1, 2)                                      # (B, Hq, Sq, D)
    k64 = k.to(compute_dtype).transpose(1, 2).repeat_interleave(Hq // Hk, dim=1)  # (B, Hq, Sk, D)
    v64 = v.to(compute_dtype).transpose(1, 2).repeat_interleave(Hq // Hk, dim=1)  # (B, Hq, Sk, Dv)
    scores = scale * (q64 @ k64.transpose(-1, -2))                          # (B, Hq, Sq, Sk)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is None:
        lse = torch.logsumexp(scores, dim=-1)                               # (B, Hq, Sq)
    else:
        sink = sinks.to(compute_dtype).view(1, Hq, 1, 1).expand(B, Hq, Sq, 1)
        lse = torch.logsumexp(torch.cat([scores, sink], dim=-1), dim=-1)    # the sink joins the denominator
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - lse.masked_fill(empty, 0.0)[..., None])      # exp(-inf) = 0 on empty rows
    if p_dtype is not None:
        probs = probs.to(p_dtype).to(compute_dtype)
    out = probs @ v64                                                       # (B, Hq, Sq, Dv)
    return out.transpose(1, 2), lse


def attention(q, k, v, *, causal: bool = False, scale: float | None = None, compute_dtype=torch.float64,
              softcap: float = 0.0, sinks: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
              p_dtype: torch.dtype | None = None):
    """attention: returns (out, lse), computed in compute_dtype (float64: the oracle). Dense is the unbounded window,
    causal the window (-1, 0), both bottom-right aligned. p_dtype: as masked_attention."""
    visible = sliding_window_visible(q.shape[1], k.shape[1], window=(-1, -1), causal=causal,
                                     key_padding_mask=key_padding_mask, device=q.device)
    return masked_attention(q, k, v, visible, scale, compute_dtype, softcap, sinks, p_dtype)


def sliding_window_visible(seqlen_q: int, seqlen_k: int, *, window: tuple[int, int], causal: bool = False,
                           dilation=1, global_tokens: torch.Tensor | None = None,
                           key_padding_mask: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Bool (B or 1, Hq or 1, Sq, Sk): may query i attend key j under docs/semantics.md?

    Query i sits at key position p = i + (Sk - Sq) (bottom-right alignment). Window part:
    p - left*dil <= j <= p + right*dil (a bound of -1 is unbounded; causal is right = 0) and (j - p) % dil == 0.
    Global part (Sq == Sk): every query also sees each global key, and a global query sees every key.
    key_padding_mask (B, Sk), True = a real key: a padding key is hidden from every query (AND with the rest).
    dilation: an int, or one int per query head.
    """
    left, right = window
    if causal:
        right = 0
    dil = torch.as_tensor([dilation] if isinstance(dilation, int) else list(dilation), device=device)
    dil = dil[:, None, None]                                           # (Hq or 1, 1, 1)
    p = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    ok = (j - p) % dil == 0                                            # (Hq or 1, Sq, Sk)
    if left >= 0:
        ok &= j >= p - left * dil
    if right >= 0:
        ok &= j <= p + right * dil
    ok = ok[None]                                                      # (1, Hq or 1, Sq, Sk)
    if global_tokens is not None:
        g = global_tokens.to(device=device, dtype=torch.bool)         # (B, Sk), Sq == Sk
        ok = ok | g[:, None, None, :] | g[:, None, :, None]
    if key_padding_mask is not None:
        ok = ok & key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    return ok


def sliding_window_attention(q, k, v, *, window: tuple[int, int], causal: bool = False, dilation=1,
                             global_tokens: torch.Tensor | None = None, scale: float | None = None,
                             compute_dtype=torch.float64, softcap: float = 0.0, sinks: torch.Tensor | None = None,
                             key_padding_mask: torch.Tensor | None = None, p_dtype: torch.dtype | None = None):
    """attention: returns (out, lse), computed in compute_dtype (float64: the oracle). p_dtype: as masked_attention."""
    visible = sliding_window_visible(q.shape[1], k.shape[1], window=window, causal=causal, dilation=dilation,
                                     global_tokens=global_tokens, key_padding_mask=key_padding_mask,
                                     device=q.device)
    return masked_attention(q, k, v, visible, scale, compute_dtype, softcap, sinks, p_dtype)


# ---- variable-length batches -----------------------------------------------------------------------------------------

def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal: bool = False, window=(-1, -1),
                     softcap: float = 0.0, sinks=None, scale: float | None = None, compute_dtype=torch.float64):
    """docs/semantics.md, sequence by sequence: q (total_q, Hq, D), k/v (total_k, Hk, ·) packed; sequence b is rows
    cu[b] .. cu[b+1]-1 and attends only its own keys, causal/window aligned bottom-right within it.
    Returns (out (total_q, Hq, Dv), lse (Hq, total_q))."""
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    Hq, Dv = q.shape[1], v.shape[2]
    out = torch.zeros(q.shape[0], Hq, Dv, dtype=compute_dtype, device=q.device)
    lse = torch.full((Hq, q.shape[0]), float("-inf"), dtype=compute_dtype, device=q.device)
    for b in range(len(cq) - 1):
        qs, ks = q[cq[b]:cq[b + 1]][None], k[ck[b]:ck[b + 1]][None]
        if qs.shape[1] == 0:
            continue
        o, l = sliding_window_attention(qs, ks, v[ck[b]:ck[b + 1]][None], window=window, causal=causal,
                                        scale=scale, compute_dtype=compute_dtype, softcap=softcap, sinks=sinks)
        out[cq[b]:cq[b + 1]] = o[0]
        lse[:, cq[b]:cq[b + 1]] = l[0]
    return out, lse


# ---- decoding against a KV cache -------------------------------------------------------------------------------------

def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, *, k=None, v=None, block_table=None,
                           causal: bool = False, window=(-1, -1), softcap: float = 0.0, sinks=None,
                           scale: float | None = None, compute_dtype=torch.float64):
    """The KV-cache rule written out: returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq), k_cache', v_cache'), the primed
    caches being copies with k, v (B, Snew, Hk, ·) appended at cache_seqlens[b] .. + Snew - 1. Sequence b attends
    its tokens 0 .. L_b - 1, L_b = cache_seqlens[b] + Snew, causal/window aligned bottom-right to L_b. A paged cache
    (num_blocks, page_size, Hk, ·) holds token t of sequence b at block block_table[b, t // page_size], row
    t % page_size."""
    B, Sq, Hq, _ = q.shape
    seqlens = [int(x) for x in (cache_seqlens if torch.is_tensor(cache_seqlens) else [cache_seqlens] * B)]
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    s_new = 0 if k is None else k.shape[1]
    paged = block_table is not None
    page = k_cache.shape[1]

    def where(b, t):  # (block or batch index, row) of token t of sequence b
        return (int(block_table[b, t // page]), t % page) if paged else (b, t)

    for b in range(B):
        for t in range(s_new):
            blk, row = where(b, seqlens[b] + t)
            k_cache[blk, row], v_cache[blk, row] = k[b, t], v[b, t]
    out = torch.zeros(B, Sq, Hq, v_cache.shape[-1], dtype=compute_dtype, device=q.device)
    lse = torch.empty(B, Hq, Sq, dtype=compute_dtype, device=q.device)
    for b in range(B):
        n = seqlens[b] + s_new
        rows = [where(b, t) for t in range(n)]
        kb = torch.stack([k_cache[i, r] for i, r in rows])[None] if n else k_cache[:1, :0]
        vb = torch.stack([v_cache[i, r] for i, r in rows])[None] if n else v_cache[:1, :0]
        o, l = sliding_window_attention(q[b:b + 1], kb, vb, window=window, causal=causal, scale=scale,
                                        compute_dtype=compute_dtype, softcap=softcap, sinks=sinks)
        out[b], lse[b] = o[0], l[0]
    return out, lse, k_cache, v_cache


# ---- Reformer's bucketed-LSH attention -------------------------------------------------------------------------------

def lsh_hash(qk: torch.Tensor, rotations: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
             compute_dtype=torch.float64, n_buckets=None) -> torch.Tensor:
    """Buckets (B, H, n_hashes, S) int64 of LSH step 2.

    Round r of token t: argmax over concat(x R_r, -x R_r) with x = qk[b, t, h] and R_r = rotations[h, :, r, :]
    (the first maximal index wins); a padded token (key_padding_mask False) goes to the extra bucket n_buckets.
    n_buckets=[f0, f1, ...] (factorized): factor i takes the next f_i / 2 columns of R_r, b_i is the argmax over
    them and their negatives, and the bucket is b_0 + f0 * (b_1 + f1 * (b_2 + ...)), of f0 * f1 * ... buckets.
    None: one factor, 2 * (the columns of R_r).
    """
    factors = [2 * rotations.shape[-1]] if n_buckets is None else (
        [n_buckets] if isinstance(n_buckets, int) else list(n_buckets))
    assert sum(f // 2 for f in factors) == rotations.shape[-1], "rotations do not match the bucket factors"
    n_buckets = math.prod(factors)
    x = qk.to(compute_dtype).transpose(1, 2)                                    # (B, H, S, D)
    rotated = torch.einsum("bhsd,hdrk->bhrsk", x, rotations.to(compute_dtype))  # (B, H, n_hashes, S, columns)
    buckets, first, place = 0, 0, 1
    for f in factors:
        part = rotated[..., first:first + f // 2]
        buckets = buckets + place * torch.cat([part, -part], dim=-1).argmax(dim=-1)  # first maximal index wins
        first, place = first + f // 2, place * f
    if key_padding_mask is not None:
        buckets = buckets.masked_fill(~key_padding_mask[:, None, None, :], n_buckets)
    return buckets


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor, *, chunk_length: int,
                  chunks_before: int = 1, chunks_after: int = 0, causal: bool = False,
                  key_padding_mask: torch.Tensor | None = None, compute_dtype=torch.float64, p_dtype=None):
    """LSH step 3-9 for given buckets (B, H, n_hashes, S). Returns (out (B, S, H, Dv), lse (B, H, S)).

    p_dtype: round the softmax probabilities to this dtype before they multiply v (what a tensor-core kernel does
    with float16 / bfloat16 inputs); None = keep them in compute_dtype.

    Loops over nothing clever: sort the (round, position) items of each (batch, head) by (round, bucket, position),
    cut the sorted list into chunks, let chunk c attend chunks c - chunks_before .. c + chunks_after (cyclic), mask
    by original positions, undo the sort, and combine the rounds by their log-sum-exps.
    """
    B, S, H, D = qk.shape
    f32 = torch.float32
    x = qk.to(compute_dtype).transpose(1, 2)                                    # (B, H, S, D): the queries
    keys = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(D)
    vals = v.to(compute_dtype).transpose(1, 2)                                  # (B, H, S, Dv)
    valid = (torch.ones(B, S, dtype=torch.bool, device=qk.device) if key_padding_mask is None
             else key_padding_mask.to(torch.bool))
    mask_value = torch.tensor(-1e9, dtype=f32).item()        # the float32 constants, as float32 computes them
    self_value = torch.tensor(-1e5, dtype=f32).item()

    def scores_of(q_pos, k_pos, bh):
        """Masked scores (Lq, Lk) of original query positions q_pos against original key positions k_pos."""
        b, h = bh
        s = x[b, h, q_pos] @ keys[b, h, k_pos].T
        hidden = ~valid[b, k_pos][None, :].expand_as(s)
        if causal:
            hidden = hidden | (k_pos[None, :] > q_pos[:, None])
        s = s.masked_fill(hidden, mask_value)
        return s.masked_fill(k_pos[None, :] == q_pos[:, None], self_value)

    def probs_of(s):
        p = torch.softmax(s, -1)
        return p if p_dtype is None else p.to(p_dtype).to(compute_dtype)

    if S <= chunk_length:                                    # step 9: one round of ordinary attention
        out = torch.empty(B, H, S, vals.shape[-1], dtype=compute_dtype, device=qk.device)
        lse = torch.empty(B, H, S, dtype=compute_dtype, device=qk.device)
        pos = torch.arange(S, device=qk.device)
        for b in range(B):
            for h in range(H):
                s = scores_of(pos, pos, (b, h))
                lse[b, h] = torch.logsumexp(s, -1)
                out[b, h] = probs_of(s) @ vals[b, h]
        return out.transpose(1, 2), lse

    n_hashes = buckets.shape[2]
    n_items = n_hashes * S
    n_chunks = n_items // chunk_length
    out = torch.zeros(B, H, S, vals.shape[-1], dtype=compute_dtype, device=qk.device)
    lse = torch.empty(B, H, S, dtype=compute_dtype, device=qk.device)
    for b in range(B):
        for h in range(H):
            # step 3: item i = (round i // S, position i % S), sorted by (round, bucket, position)
            item = torch.arange(n_items, device=qk.device)
            round_, pos = item // S, item % S
            bucket = buckets[b, h].reshape(-1).to(torch.int64)
            order = torch.argsort((round_ * (int(bucket.max()) + 1) + bucket) * S + pos)   # keys are distinct
            # step 4: chunk c's queries are its own items; its keys are the items of chunks c-before .. c+after
            q_items = order.reshape(n_chunks, chunk_length)                                 # (n_chunks, L)
            k_items = torch.cat([q_items.roll(-a, dims=0) for a in range(-chunks_before, chunks_after + 1)],
                                dim=1)                                                      # (n_chunks, L * n_adj)
            q_pos, k_pos = q_items % S, k_items % S
            # steps 5-7, every chunk at once
            s = torch.einsum("cqd,ckd->cqk", x[b, h][q_pos], keys[b, h][k_pos])
            hidden = ~valid[b][k_pos][:, None, :].expand_as(s)
            if causal:
                hidden = hidden | (k_pos[:, None, :] > q_pos[:, :, None])
            s = s.masked_fill(hidden, mask_value)
            s = s.masked_fill(k_pos[:, None, :] == q_pos[:, :, None], self_value)
            lse_items = torch.empty(n_items, dtype=compute_dtype, device=qk.device)
            o_items = torch.empty(n_items, vals.shape[-1], dtype=compute_dtype, device=qk.device)
            lse_items[q_items.reshape(-1)] = torch.logsumexp(s, -1).reshape(-1)              # undo the sort
            o_items[q_items.reshape(-1)] = torch.einsum("cqk,ckv->cqv", probs_of(s),
                                                        vals[b, h][k_pos]).reshape(n_items, -1)
            lse_r = lse_items.reshape(n_hashes, S)           # step 8: combine the rounds
            lse[b, h] = torch.logsumexp(lse_r, 0)
            weights = torch.exp(lse_r - lse[b, h][None, :])
            out[b, h] = (weights[..., None] * o_items.reshape(n_hashes, S, -1)).sum(0)
    return out.transpose(1, 2), lse
