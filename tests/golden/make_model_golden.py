#!/usr/bin/python3
"""PyTorch reference for the whole model: writes tests/golden/model_tiny.bin.

The file is committed so the C++ test (tests/golden/model_golden_test.cpp) needs no torch.
Regenerate it with Debian's python3-torch (no pip install needed):

    /usr/bin/python3 tests/golden/make_model_golden.py            # writes next to this script
    /usr/bin/python3 tests/golden/make_model_golden.py --check    # recomputes, compares with it

Options: --out-dir DIR (default: this script's folder), --check (write nothing: recompute and
compare with the file already there; inputs must be bit-equal, outputs within 1e-12).
Seeded, so a rerun on the same machine gives identical bytes. The file format ("MOERUNGD" v1)
and the routing are make_moe_golden.py's, imported, so both goldens share their semantics.

Model (float64 autograd from the stored float32 parameter values; written from the HF
DeepSeek/LLaMA definitions, not from the C++ code), tokens and targets (n_seq, seq_len):
  x = embed[tokens]
  per block l: h = x + Attn(RMSNorm(x; attn_norm)); x = h + FFN(RMSNorm(h; ffn_norm))
    RMSNorm(x; w) = w * x / sqrt(mean(x^2) + eps)
    Attn: q | k | v = rows of wqkv (3H, H); per head (head_dim D = H / heads) HF RoPE,
      q' = q cos + rotate_half(q) sin with angle pos * theta^(-2j/D) for the pair (j, j + D/2),
      positions restarting at 0 per sequence; softmax(q' k'^T / sqrt(D) + causal mask) v;
      heads concatenated, times wo^T.
    FFN (l < first_k_dense): SwiGLU with w13 (2F, H) rows W1 | W3 and w2 (H, F).
    FFN (MoE): softmax router scores, top-K on scores + bias (bias selects only), gate weights
      = unbiased scores * routed_scaling_factor, routed SwiGLU experts w13 (E, 2F, H),
      w2 (E, H, F), plus the shared experts as one SwiGLU of width S*F.
  logits = RMSNorm(x; norm) lm_head^T; loss = mean cross-entropy over all n_seq*seq_len rows
  (no auxiliary loss). Gradients of loss by autograd for every parameter (not the bias).

Entries: config.* scalars, tokens and targets (i32), every parameter under the name
Model::params() gives it, in the C++ layout (f32), layers.<l>.moe.bias (f32), logits (N, V),
loss, and "d" + name for every parameter (f64).
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_moe_golden import DTYPES, MIN_GAP, read_file, route, write_file  # noqa: E402

FILE = "model_tiny.bin"
SEED = 4004
STD = 0.3
CFG = dict(vocab=13, hidden=16, layers=2, heads=2, seq_len=6, n_seq=2, first_k_dense=1,
           dense_ffn=24,
           # the MoE layers (MoEConfig); names as in make_moe_golden.py so route() reads them
           E=4, K=2, F=8, S=1, score_fn=0, topk_norm=0, n_group=1, topk_group=1, group_score=0,
           routed_scaling_factor=1.0, rope_theta=10000.0,
           # ModelConfig::norm_eps is a float: use exactly the float32 value of 1e-6
           norm_eps=float(torch.tensor(1e-6, dtype=torch.float32)))
INT_KEYS = ["vocab", "hidden", "layers", "heads", "seq_len", "n_seq", "first_k_dense",
            "dense_ffn", "E", "K", "F", "S", "score_fn", "topk_norm", "n_group", "topk_group",
            "group_score"]
FLOAT_KEYS = ["norm_eps", "rope_theta", "routed_scaling_factor"]


def is_moe(c, layer):
    return layer >= c["first_k_dense"]


def draw_inputs(c, seed):
    """Parameters (rounded to float32: the C++ side reads exactly these), bias, tokens."""
    torch.manual_seed(seed)
    V, H, Fd = c["vocab"], c["hidden"], c["dense_ffn"]
    E, F, SF = c["E"], c["F"], c["S"] * c["F"]

    def mat(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * STD).float()

    def norm_weight():
        return (1.0 + 0.2 * torch.randn(H, dtype=torch.float64)).float()

    p = {"embed.weight": mat(V, H)}
    bias = {}
    for layer in range(c["layers"]):
        pre = f"layers.{layer}."
        p[pre + "attn_norm.weight"] = norm_weight()
        p[pre + "attn.wqkv"] = mat(3 * H, H)
        p[pre + "attn.wo"] = mat(H, H)
        p[pre + "ffn_norm.weight"] = norm_weight()
        if is_moe(c, layer):
            p[pre + "moe.gate"] = mat(E, H)
            p[pre + "moe.w13"] = mat(E, 2 * F, H)
            p[pre + "moe.w2"] = mat(E, H, F)
            if SF > 0:
                p[pre + "moe.shared_w13"] = mat(2 * SF, H)
                p[pre + "moe.shared_w2"] = mat(H, SF)
            bias[pre + "moe.bias"] = (torch.randn(E, dtype=torch.float64) * 0.05).float()
        else:
            p[pre + "ffn.w13"] = mat(2 * Fd, H)
            p[pre + "ffn.w2"] = mat(H, Fd)
    p["norm.weight"] = norm_weight()
    p["lm_head.weight"] = mat(V, H)
    shape = (c["n_seq"], c["seq_len"])
    tokens = torch.randint(0, V, shape, dtype=torch.int32)
    targets = torch.randint(0, V, shape, dtype=torch.int32)
    return p, bias, tokens, targets


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps))


def swiglu(x, w13, w2):
    w1, w3 = w13.chunk(2, dim=0)  # rows [0,F) gate_proj, [F,2F) up_proj
    return (Fn.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention(c, x, wqkv, wo):
    """x (B, T, H) -> (B, T, H): HF LLaMA attention with fused q/k/v rows."""
    B, T, H = x.shape
    nh = c["heads"]
    D = H // nh
    q, k, v = (x @ wqkv.T).split(H, dim=-1)
    q, k, v = (t.view(B, T, nh, D).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, D)
    inv_freq = c["rope_theta"] ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, nh, T, D)
    return out.transpose(1, 2).reshape(B, T, H) @ wo.T


def moe(c, x, p, pre, bias):
    """x (N, H) -> (N, H) without the residual; returns it and the routing's smallest gap."""
    s = torch.softmax(x @ p[pre + "gate"].T, dim=-1)
    assert c["score_fn"] == 0 and c["topk_norm"] == 0, "only softmax without norm is modelled"
    topk_idx, gap = route(c, s, bias)
    w = s.gather(1, topk_idx) * c["routed_scaling_factor"]
    y = torch.zeros_like(x)
    if c["S"] > 0:
        y = y + swiglu(x, p[pre + "shared_w13"], p[pre + "shared_w2"])
    for t in range(x.shape[0]):
        for k in range(c["K"]):
            e = int(topk_idx[t, k])
            out = swiglu(x[t:t + 1], p[pre + "w13"][e], p[pre + "w2"][e])
            y = y.index_add(0, torch.tensor([t]), w[t:t + 1, k:k + 1] * out)
    return y, gap


def forward_backward(c, params, bias, tokens, targets):
    p = {k: v.double().requires_grad_(True) for k, v in params.items()}
    B, T, H, eps = c["n_seq"], c["seq_len"], c["hidden"], c["norm_eps"]
    x = p["embed.weight"][tokens.long()]  # (B, T, H)
    gap = float("inf")
    for layer in range(c["layers"]):
        pre = f"layers.{layer}."
        xn = rmsnorm(x, p[pre + "attn_norm.weight"], eps)
        h = x + attention(c, xn, p[pre + "attn.wqkv"], p[pre + "attn.wo"])
        hn = rmsnorm(h, p[pre + "ffn_norm.weight"], eps)
        if is_moe(c, layer):
            y, g = moe(c, hn.reshape(B * T, H), p, pre + "moe.", bias[pre + "moe.bias"])
            gap = min(gap, g)
            y = y.view(B, T, H)
        else:
            y = swiglu(hn, p[pre + "ffn.w13"], p[pre + "ffn.w2"])
        x = h + y
    logits = rmsnorm(x, p["norm.weight"], eps).reshape(B * T, H) @ p["lm_head.weight"].T
    loss = Fn.cross_entropy(logits, targets.reshape(-1).long())
    loss.backward()
    grads = {"d" + k: v.grad.detach() for k, v in p.items()}
    return logits.detach(), loss.detach(), grads, gap


def build_entries(c, params, bias, tokens, targets, logits, loss, grads):
    """Ordered list of (name, dtype code, tensor)."""
    ents = [("config." + k, DTYPES["i64"], torch.tensor(c[k], dtype=torch.int64))
            for k in INT_KEYS]
    ents += [("config." + k, DTYPES["f64"], torch.tensor(c[k], dtype=torch.float64))
             for k in FLOAT_KEYS]
    ents += [("tokens", DTYPES["i32"], tokens), ("targets", DTYPES["i32"], targets)]
    ents += [(k, DTYPES["f32"], v) for k, v in params.items()]
    ents += [(k, DTYPES["f32"], v) for k, v in bias.items()]
    ents += [("logits", DTYPES["f64"], logits), ("loss", DTYPES["f64"], loss)]
    ents += [(k, DTYPES["f64"], v) for k, v in grads.items()]
    return ents


def compare_with_file(path, ents):
    """Inputs bit-equal, f64 outputs within 1e-12 * max|value| (another torch/BLAS may round
    differently). Returns a list of problems."""
    back = read_file(path)
    problems = []
    if list(back.keys()) != [e[0] for e in ents]:
        problems.append(f"entry names differ: file {list(back.keys())}")
        return problems
    for name, code, t in ents:
        bc, bshape, bt = back[name]
        if bc != code or bshape != list(t.shape):
            problems.append(f"{name}: dtype/shape {bc} {bshape} vs {code} {list(t.shape)}")
        elif code == DTYPES["f64"] and not name.startswith("config."):
            want = t.double()
            err = float((bt - want).abs().max()) if want.numel() else 0.0
            scale = float(want.abs().max()) if want.numel() else 0.0
            if err > 1e-12 * max(scale, 1.0):
                problems.append(f"{name}: max |diff| {err:.3g} (scale {scale:.3g})")
        elif not torch.equal(bt, t.to(bt.dtype)):
            problems.append(f"{name}: differs")
    return problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; recompute and compare with the existing file")
    args = ap.parse_args()
    torch.set_num_threads(1)  # same reduction order on every run
    print(f"torch {torch.__version__}")
    c = CFG
    seed = SEED
    for _ in range(100):
        params, bias, tokens, targets = draw_inputs(c, seed)
        logits, loss, grads, gap = forward_backward(c, params, bias, tokens, targets)
        if gap > MIN_GAP:
            break
        print(f"  seed {seed} has a routing near-tie (gap {gap:.3g}), redrawing")
        seed += 1
    else:
        sys.exit("no seed without routing near-ties")
    ents = build_entries(c, params, bias, tokens, targets, logits, loss, grads)
    path = os.path.join(args.out_dir, FILE)
    gmax = max(float(g.abs().max()) for g in grads.values())
    gmin = min(float(g.abs().max()) for g in grads.values())
    summary = (f"seed {seed}, min routing gap {gap:.3g}, loss {float(loss):.6f} "
               f"(ln V = {math.log(c['vocab']):.3f}), |logits|max {float(logits.abs().max()):.3f}, "
               f"per-gradient max|g| in [{gmin:.3g}, {gmax:.3g}]")
    if args.check:
        problems = compare_with_file(path, ents)
        for msg in problems:
            print(f"  MISMATCH {msg}")
        if problems:
            sys.exit(f"{path}: {len(problems)} entries differ from the recomputation")
        print(f"{path}: {len(ents)} entries match the recomputation; {summary}")
        return
    os.makedirs(args.out_dir, exist_ok=True)
    nbytes = write_file(path, ents)
    print(f"{path}: {nbytes} bytes, {len(ents)} entries; {summary}")


if __name__ == "__main__":
    main()
