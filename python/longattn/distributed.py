"""Context parallelism: one sequence sharded over the ranks of a torch.distributed process group.

Every rank holds a shard of q, k, v along the sequence and gets its shard of the output, equal (to float32
rounding) to one process running `attention` / `sliding_window_attention` on the whole sequence. The transport is
torch.distributed's (gloo on CPUs, NCCL on GPUs); the arithmetic is longattn's kernels, each returning the lse that
lets partial results over different keys be merged exactly.

* dense and causal (`window` (-1, -1) or (-1, 0)): ring attention. The key/value shards travel around the ring, the
  next transfer in flight while the shard in hand is computed; pairs of chunks that causality hides are skipped.
  The `zigzag` layout balances causal work (rank r holds chunks r and 2P-1-r of 2P).
* a window bounded on both sides: a halo exchange. A rank fetches only the keys within `left * dilation` before and
  `right * dilation` after each of its chunks, from as many neighbours as the window spans: traffic O(window) per
  rank, independent of the sequence length. (A window bounded on one side only, or a dilation that does not divide
  the ring's chunk length, takes this path with the unbounded side reaching the sequence's end: correct, but the
  traffic is then O(S).)
* global tokens (Longformer): the global keys/values are gathered once (all_gather) and every query attends them;
  the windowed/ring part then treats them as padding so each is counted once. The global query rows, which attend
  the whole sequence, are gathered to every rank, attended against each rank's own shard, and the partial results
  merged by lse: traffic O(global rows), not O(S).

Every rank must pass the same options and shapes; they are compared across ranks first (an all_reduce of a hash),
and a mismatch raises the same ValueError on every rank instead of a hang. The p2p transfers (isend / irecv) are not
traceable by torch.compile: under it, this function is a graph break (the attention kernels inside still run as
longattn's operators).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from . import _shared_options
from . import attention as _dense_attention
from . import sliding_window_attention as _window_attention
from ._validate import check_dilation, check_no_grad, check_qkv

__all__ = ["attention", "bytes_sent", "reset_bytes_sent"]

LAYOUTS = ("contiguous", "zigzag")
HALO_BLOCK_ROWS = 4096  # the halo path attends at least this many query rows per call (tests lower it)
_sent = [0]  # bytes this process has sent through this module (the benchmark's traffic figure)


def bytes_sent() -> int:
    """Bytes this process has sent to other ranks through `attention` since the last reset: point-to-point sends,
    plus (P - 1) times each buffer it contributed to an all_gather / all_reduce."""
    return _sent[0]


def reset_bytes_sent() -> None:
    _sent[0] = 0


# ---- shards: which sequence positions a rank holds -------------------------------------------------------------


def _chunks(rank: int, world: int, n: int, layout: str) -> list[tuple[int, int, int]]:
    """(first position, length, first local row) of each contiguous piece of the sequence that `rank` holds."""
    if layout == "contiguous":
        return [(rank * n, n, 0)]
    c = n // 2
    return [(rank * c, c, 0), ((2 * world - 1 - rank) * c, c, c)]


def _positions(chunks, device) -> torch.Tensor:
    """(n,) int64: the sequence position of each local row."""
    return torch.cat([torch.arange(a, a + length, device=device) for a, length, _ in chunks])


def _union(ranges):
    out = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges, holes):
    """The parts of `ranges` outside `holes` (both lists of (lo, hi))."""
    out = []
    for lo, hi in ranges:
        cur = lo
        for h0, h1 in sorted(holes):
            if h1 <= cur or h0 >= hi:
                continue
            if h0 > cur:
                out.append((cur, h0))
            cur = max(cur, h1)
        if cur < hi:
            out.append((cur, hi))
    return out


# ---- the lse merge ---------------------------------------------------------------------------------------------


def _merge_into(acc_out: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """acc (float32 out (B, n, H, Dv), lse (B, H, n)) <- the softmax-weighted union of acc and (out, lse), the
    partial results of the same rows over disjoint key sets. Stable: shifted by the larger lse; rows empty in both
    (lse -inf) stay out = 0, lse = -inf."""
    m = torch.maximum(acc_lse, lse)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w_acc, w_new = torch.exp(acc_lse - m), torch.exp(lse - m)
    total = w_acc + w_new
    inv = torch.where(total > 0, 1.0 / total, torch.zeros_like(total))
    acc_out.mul_((w_acc * inv).transpose(1, 2).unsqueeze(-1))
    acc_out.add_(out.float() * (w_new * inv).transpose(1, 2).unsqueeze(-1))
    acc_lse.copy_(m + torch.log(total))


# ---- communication helpers -------------------------------------------------------------------------------------


class _Comm:
    def __init__(self, group, device):
        import torch.distributed as dist

        self.dist, self.group = dist, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.device = device

    def peer(self, group_rank: int) -> int:
        return self.dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def exchange(self, sends, recvs):
        """Start point-to-point transfers: sends [(tensor, group rank)], recvs [(tensor, group rank)]; returns the
        works to wait on. One batch, so the two sides of a pair cannot deadlock on ordering."""
        if not sends and not recvs:
            return []
        ops = [self.dist.P2POp(self.dist.isend, t, self.peer(p), self.group) for t, p in sends]
        ops += [self.dist.P2POp(self.dist.irecv, t, self.peer(p), self.group) for t, p in recvs]
        _sent[0] += sum(t.numel() * t.element_size() for t, _ in sends)
        return self.dist.batch_isend_irecv(ops)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        _sent[0] += (self.world - 1) * t.numel() * t.element_size()
        self.dist.all_gather(parts, t, group=self.group)
        return parts


def _options_hash(*items) -> int:
    return int.from_bytes(hashlib.blake2b(repr(items).encode(), digest_size=7).digest(), "little")


def _check_same_everywhere(comm: _Comm, description: str, value: int) -> None:
    """Raise on every rank (never hang) when the ranks' options differ: an all_reduce of (h, -h) with MAX gives
    (max h, -min h)."""
    t = torch.tensor([value, -value], dtype=torch.int64, device=comm.device)
    _sent[0] += (comm.world - 1) * t.numel() * t.element_size()
    comm.dist.all_reduce(t, op=comm.dist.ReduceOp.MAX, group=comm.group)
    if int(t[0]) != -int(t[1]):
        # each rank's options, as fixed-size byte tensors (all_gather_object would need numpy)
        text = torch.zeros(512, dtype=torch.uint8)
        raw = description.encode()[:512]
        text[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        everyone = [bytes(t.cpu().tolist()).rstrip(b"\0").decode(errors="replace")
                    for t in comm.all_gather(text.to(comm.device))]
        listing = "; ".join(f"rank {r}: {d}" for r, d in enumerate(everyone))
        raise ValueError(f"options: the ranks passed different options or shard shapes; every rank must call "
                         f"longattn.distributed.attention with the same ones ({listing})")


def _global_tokens_digest(global_tokens: Optional[torch.Tensor]) -> int:
    if global_tokens is None:
        return -1
    g = global_tokens.reshape(-1).to(torch.int64)
    weights = (torch.arange(g.numel(), device=g.device, dtype=torch.int64) * 2654435761 + 97) % 2147483647
    return int((g * weights).sum()) ^ int(g.sum()) << 40


# ---- the public function ---------------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, layout: str = "contiguous",
              causal: bool = False, window: tuple[int, int] = (-1, -1), dilation=1,
              global_tokens: Optional[torch.Tensor] = None, softcap: float = 0.0, scale: Optional[float] = None,
              return_lse: bool = False):
    """Attention over a sequence sharded across the ranks of `group` (default: the world).

    q (B, n, Hq, D), k (B, n, Hk, D), v (B, n, Hk, Dv): this rank's shard of a sequence of S = n * P positions
    (P = the group's size). layout="contiguous": rank r holds positions [r n, (r + 1) n); "zigzag": the sequence is
    cut into 2P chunks of n / 2 and rank r holds chunks r and 2P - 1 - r, in that order (n must be even).
    causal, window, dilation, softcap, scale: as in `sliding_window_attention`, over absolute positions.
    global_tokens: (B, S) bool over the *whole* sequence, the same on every rank. Returns this rank's out
    (B, n, Hq, Dv), and with return_lse its lse (B, Hq, n) float32.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group: torch.distributed is not initialised; call torch.distributed.init_process_group "
                         "(gloo for CPU tensors, nccl for CUDA tensors) on every rank first")
    # Every rank takes part in the options check even when its own arguments are bad, so that a rank's error never
    # leaves the others waiting in a collective: its error joins the description compared across ranks.
    comm = _Comm(group, _comm_device(group, q))
    try:
        (B, n, Hq, D, Hk, Dv, S, left, right, dil, softcap, scale, global_tokens) = _check_arguments(
            q, k, v, comm.world, layout, causal, window, dilation, global_tokens, softcap, scale, return_lse)
        description = (f"B={B} n={n} Hq={Hq} Hk={Hk} D={D} Dv={Dv} {q.dtype} layout={layout} causal={causal} "
                       f"window=({left}, {right}) dilation={dil} softcap={softcap} scale={scale} lse={return_lse} "
                       f"global_tokens={_global_tokens_digest(global_tokens)}")
        error = None
    except (TypeError, ValueError) as e:
        description, error = f"{type(e).__name__}: {e}", e
    _check_same_everywhere(comm, description, _options_hash(description, comm.world))
    if error is not None:  # the same error on every rank
        raise error

    acc_out = torch.zeros(B, n, Hq, Dv, dtype=torch.float32, device=q.device)
    acc_lse = torch.full((B, Hq, n), float("-inf"), dtype=torch.float32, device=q.device)
    if B == 0 or n == 0:
        return (acc_out.to(q.dtype), acc_lse) if return_lse else acc_out.to(q.dtype)
    dil_arg = dil if len(set(dil)) > 1 else dil[0]
    keys_visible = None if global_tokens is None else ~global_tokens  # the local part leaves global keys out
    opts = dict(dilation=dil_arg, softcap=softcap, scale=scale)
    chunk = n if layout == "contiguous" else n // 2
    ring = (left, right) in ((-1, -1), (-1, 0)) and all(chunk % d == 0 for d in dil)
    if ring:
        _ring(q, k, v, comm, layout, causal=right == 0, keys_visible=keys_visible, acc=(acc_out, acc_lse), opts=opts)
    else:
        _halo(q, k, v, comm, layout, left, right, max(dil), keys_visible, (acc_out, acc_lse), opts)
    if global_tokens is not None:
        rows = _GlobalRows(global_tokens, comm, n, layout)
        _global_keys(q, k, v, rows, (acc_out, acc_lse), softcap, scale)
        _global_rows(q, k, v, rows, (acc_out, acc_lse), softcap, scale)
    out = acc_out.to(q.dtype)
    return (out, acc_lse) if return_lse else out


def _comm_device(group, q) -> torch.device:
    """Where the small tensors of the collectives live: NCCL needs the rank's CUDA device, gloo takes CPU tensors."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return q.device if isinstance(q, torch.Tensor) and q.is_cuda else torch.device("cuda",
                                                                                       torch.cuda.current_device())
    return torch.device("cpu")


def _check_arguments(q, k, v, P, layout, causal, window, dilation, global_tokens, softcap, scale, return_lse):
    check_qkv(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q, k: shards of {q.shape[1]} and {k.shape[1]} positions; context parallelism is for "
                         "self-attention, with q, k and v sharded alike")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}; expected one of {', '.join(map(repr, LAYOUTS))}")
    B, n, Hq, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    left, right, scale, softcap, _ = _shared_options(causal, return_lse, window, scale, D, softcap, None, Hq,
                                                     q.device)
    if causal:
        right = 0
    dil = check_dilation(dilation, Hq) or [1] * Hq
    check_no_grad(q, k, v)
    S = n * P
    if layout == "zigzag" and n % 2:
        raise ValueError(f"layout: 'zigzag' cuts the sequence into 2P = {2 * P} equal chunks, two per rank; got a "
                         f"shard of n = {n} positions, not even (S = {S} must divide by {2 * P})")
    if global_tokens is not None:
        if not isinstance(global_tokens, torch.Tensor):
            raise TypeError(f"global_tokens: expected a torch.Tensor or None, got {type(global_tokens).__name__}")
        if global_tokens.dtype != torch.bool or tuple(global_tokens.shape) != (B, S):
            raise ValueError(f"global_tokens: got {global_tokens.dtype} shape {tuple(global_tokens.shape)}; expected "
                             f"torch.bool (batch, whole sequence) = ({B}, {S}), the same on every rank")
        if global_tokens.device != q.device:
            raise ValueError(f"global_tokens: on {global_tokens.device}; expected the inputs' device {q.device}")
        if not bool(global_tokens.any()):
            global_tokens = None
    return B, n, Hq, D, Hk, Dv, S, left, right, dil, softcap, scale, global_tokens


# ---- dense / causal: the ring ----------------------------------------------------------------------------------


def _ring(q, k, v, comm, layout, *, causal, keys_visible, acc, opts):
    """Step t: this rank holds the key/value shard of rank (r - t) mod P; the shard moves on to r + 1 while it is
    used. Per pair of chunks: all visible, causal on the diagonal, or (causal, keys after the queries) skipped."""
    P, r, n = comm.world, comm.rank, q.shape[1]
    acc_out, acc_lse = acc
    mine = _chunks(r, P, n, layout)
    k_cur, v_cur = k.contiguous(), v.contiguous()
    for step in range(P):
        src = (r - step) % P
        works = []
        if step + 1 < P:  # the next shard travels while this one is computed
            k_next, v_next = torch.empty_like(k_cur), torch.empty_like(v_cur)
            works = comm.exchange([(k_cur, (r + 1) % P), (v_cur, (r + 1) % P)],
                                  [(k_next, (r - 1) % P), (v_next, (r - 1) % P)])
        theirs = _chunks(src, P, n, layout)
        if not causal:  # every pair visible: one call for the whole shard
            pairs = [((0, n), (0, n), False, _positions(theirs, q.device))]
        else:
            pairs = [((qo, qo + qn), (ko, ko + kn), ka == qa, torch.arange(ka, ka + kn, device=q.device))
                     for qa, qn, qo in mine for ka, kn, ko in theirs if ka <= qa]
        for (q0, q1), (k0, k1), diagonal, key_positions in pairs:
            mask = None if keys_visible is None else keys_visible[:, key_positions]
            o, lse = _window_attention(q[:, q0:q1], k_cur[:, k0:k1], v_cur[:, k0:k1],
                                       window=(-1, 0 if diagonal else -1), key_padding_mask=mask, return_lse=True,
                                       **opts)
            _merge_into(acc_out[:, q0:q1], acc_lse[:, :, q0:q1], o, lse)
        for w in works:
            w.wait()
        if step + 1 < P:
            k_cur, v_cur = k_next, v_next


# ---- windows: the halo exchange --------------------------------------------------------------------------------


def _halo(q, k, v, comm, layout, left, right, max_dilation, keys_visible, acc, opts):
    """Each chunk of queries [a, a + c) needs keys [a - left*dil, a + c + right*dil) (clipped to the sequence); what
    other ranks hold of that range is sent to it, in pieces computed identically on both sides."""
    P, r, n = comm.world, comm.rank, q.shape[1]
    B, _, Hq, D = q.shape
    S = n * P
    reach_left = S if left < 0 else left * max_dilation
    reach_right = S if right < 0 else right * max_dilation

    def needs(rank):
        return [(max(0, a - reach_left), min(S, a + c + reach_right)) for a, c, _ in _chunks(rank, P, n, layout)]

    def owned(rank):
        return [(a, a + c) for a, c, _ in _chunks(rank, P, n, layout)]

    def pieces(src, dst):  # what src sends dst: src's rows in dst's needed ranges that dst does not hold itself
        wanted = _subtract(_union(needs(dst)), owned(dst))
        return [(max(lo, a0), min(hi, a1)) for lo, hi in wanted for a0, a1 in owned(src) if max(lo, a0) < min(hi, a1)]

    local = {}  # (lo, hi) -> (k rows, v rows) of positions lo..hi-1 this rank has
    for a, c, off in _chunks(r, P, n, layout):
        local[(a, a + c)] = (k[:, off:off + c], v[:, off:off + c])
    sends, recvs = [], []
    for other in range(P):
        if other == r:
            continue
        for x0, x1 in pieces(r, other):
            for (a0, a1), (kk, vv) in list(local.items()):
                if a0 <= x0 and x1 <= a1:
                    sends += [(kk[:, x0 - a0:x1 - a0].contiguous(), other),
                              (vv[:, x0 - a0:x1 - a0].contiguous(), other)]
        for x0, x1 in pieces(other, r):
            kb = torch.empty((B, x1 - x0) + tuple(k.shape[2:]), dtype=k.dtype, device=k.device)
            vb = torch.empty((B, x1 - x0) + tuple(v.shape[2:]), dtype=v.dtype, device=v.device)
            recvs += [(kb, other), (vb, other)]
    for w in comm.exchange(sends, recvs):
        w.wait()
    received = [(recvs[i][0], recvs[i + 1][0]) for i in range(0, len(recvs), 2)]
    for other in range(P):  # file the received pieces by position, in the order they were listed
        if other != r:
            for x0, x1 in pieces(other, r):
                local[(x0, x1)] = received.pop(0)

    pieces = sorted(local.items())  # disjoint; together they cover every position this rank needs

    def key_rows(lo, hi):
        """k, v rows of positions lo..hi-1: a view when one piece holds them all, else the pieces concatenated."""
        for (x0, x1), (kk, vv) in pieces:
            if x0 <= lo and hi <= x1:
                return kk[:, lo - x0:hi - x0], vv[:, lo - x0:hi - x0]
        parts = [(kk[:, max(lo, x0) - x0:min(hi, x1) - x0], vv[:, max(lo, x0) - x0:min(hi, x1) - x0])
                 for (x0, x1), (kk, vv) in pieces if max(lo, x0) < min(hi, x1)]
        assert sum(kp.shape[1] for kp, _ in parts) == hi - lo, f"halo: positions {lo}..{hi} missing (bug)"
        return torch.cat([kp for kp, _ in parts], dim=1), torch.cat([vp for _, vp in parts], dim=1)

    # Queries go in blocks of rows, so that the keys of a block are mostly a view of this rank's own rows and the
    # temporaries stay small; one block per chunk when a side is unbounded (its keys run to the sequence's end).
    rows = n if left < 0 or right < 0 else max(HALO_BLOCK_ROWS, 8 * reach_right)
    acc_out, acc_lse = acc
    for a, c, off in _chunks(r, P, n, layout):
        for s0 in range(0, c, rows):
            s1 = min(c, s0 + rows)
            lo, hi = max(0, a + s0 - reach_left), min(S, a + s1 + reach_right)
            k_block, v_block = key_rows(lo, hi)
            # The kernels align the last query with the last key (query i sits at key i + Sk - Sq): pad the
            # queries with the rows of the right halo so that query a + s0 + i lands on key row a + s0 + i - lo.
            q_block = q[:, off + s0:off + s1]
            pad = hi - (a + s1)
            if pad:
                q_block = torch.cat([q_block, q.new_zeros((B, pad, Hq, D))], dim=1)
            mask = None if keys_visible is None else keys_visible[:, lo:hi]
            o, lse = _window_attention(q_block, k_block, v_block, window=(left, right), key_padding_mask=mask,
                                       return_lse=True, **opts)
            # the first partial result of these rows: stored, not merged
            acc_out[:, off + s0:off + s1] = o[:, :s1 - s0]
            acc_lse[:, :, off + s0:off + s1] = lse[:, :, :s1 - s0]


# ---- global tokens ---------------------------------------------------------------------------------------------


class _GlobalRows:
    """Where the global tokens sit: per rank and batch element, the rank's local rows that are global (computed once
    per call, the same on every rank), padded per rank to G, the most any (rank, batch) holds, for the all_gathers."""

    def __init__(self, global_tokens, comm, n, layout):
        P = comm.world
        self.comm = comm
        self.per_rank = []
        for o in range(P):
            positions = _positions(_chunks(o, P, n, layout), global_tokens.device)
            self.per_rank.append([torch.nonzero(global_tokens[b, positions]).flatten()
                                  for b in range(global_tokens.shape[0])])
        self.G = max(int(rows.numel()) for rank_rows in self.per_rank for rows in rank_rows)
        self.valid = torch.zeros(global_tokens.shape[0], P * self.G, dtype=torch.bool, device=global_tokens.device)
        for o, rank_rows in enumerate(self.per_rank):
            for b, rows in enumerate(rank_rows):
                self.valid[b, o * self.G:o * self.G + rows.numel()] = True  # (B, P * G): the real gathered rows

    def mine(self):
        return self.per_rank[self.comm.rank]

    def gather(self, t):
        """All ranks' global rows of t (B, n, H, ·): (B, P * G, H, ·), rank o's in [o G, o G + its count)."""
        mine = t.new_zeros((t.shape[0], self.G) + tuple(t.shape[2:]))
        for b, rows in enumerate(self.mine()):
            mine[b, :rows.numel()] = t[b, rows]
        return torch.cat(self.comm.all_gather(mine), dim=1)


def _global_keys(q, k, v, rows: _GlobalRows, acc, softcap, scale):
    """Every query attends every global key once (the ring / halo left them out): gather them (keys and values in
    one collective), attend, merge."""
    D = k.shape[3]
    kv_glob = rows.gather(torch.cat([k, v], dim=3))
    o, lse = _dense_attention(q, kv_glob[..., :D], kv_glob[..., D:], key_padding_mask=rows.valid, softcap=softcap,
                              scale=scale, return_lse=True)
    _merge_into(acc[0], acc[1], o, lse)


def _global_rows(q, k, v, rows: _GlobalRows, acc, softcap, scale):
    """A global query attends the whole sequence: every rank attends all global queries against its own shard, the
    partial results are gathered and merged, and each rank keeps its own rows."""
    comm = rows.comm
    o, lse = _dense_attention(rows.gather(q), k, v, softcap=softcap, scale=scale, return_lse=True)
    outs, lses = comm.all_gather(o.float()), comm.all_gather(lse)
    merged_out = torch.zeros_like(outs[0])
    merged_lse = torch.full_like(lses[0], float("-inf"))
    for o_part, lse_part in zip(outs, lses):
        _merge_into(merged_out, merged_lse, o_part, lse_part)
    acc_out, acc_lse = acc
    first = comm.rank * rows.G
    for b, mine in enumerate(rows.mine()):
        m = mine.numel()
        acc_out[b, mine] = merged_out[b, first:first + m]
        acc_lse[b, :, mine] = merged_lse[b, :, first:first + m]
