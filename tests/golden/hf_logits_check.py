#!/usr/bin/env python3
"""A tiny DeepSeek-style causal LM built from a HuggingFace safetensors directory by HF
semantics (notes/algorithms.md section 9), independent of moerun's code: RMSNorm, RoPE in the
HF LLaMA rotate_half convention, MHA with causal softmax, dense SwiGLU layers, MoE layers with
softmax|sigmoid scores, greedy | group_limited_greedy | noaux_tc top-k (+ e_score_correction_bias
for the choice only), optional top-k normalisation, routed_scaling_factor, shared experts.

Prints the logits' summary on stderr and, as the last stdout line, the mean next-token
cross-entropy of the token sequence (whitespace-separated ids in TOKENS_FILE), so that
tests/cli/convert.sh can compare it with `moerun convert --check-loss TOKENS_FILE CKPT_DIR` on
the checkpoint the directory was exported from.

No safetensors package: the files are parsed with json/struct/numpy. Computes in float64.

Usage: hf_logits_check.py HF_DIR TOKENS_FILE [--logits]
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b0, b1 = e["data_offsets"]
        raw = data[b0:b1]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        else:
            raise ValueError(f"{path}: {name} has dtype {e['dtype']}")
        out[name] = torch.from_numpy(a.astype(np.float64).reshape(e["shape"]))
    return out


def load_dir(d):
    index = os.path.join(d, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values()))
             if os.path.exists(index) else ["model.safetensors"])
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(d, f)))
    return w


def rms_norm(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def attention(x, p, c):
    T, H = x.shape
    nh = c["num_attention_heads"]
    hd = H // nh
    q = (x @ p["self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
    k = (x @ p["self_attn.k_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
    v = (x @ p["self_attn.v_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
    theta = c.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((ang, ang), dim=-1)  # HF: cat(freqs, freqs)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    o = torch.softmax(s, dim=-1) @ v
    return o.transpose(0, 1).reshape(T, H) @ p["self_attn.o_proj.weight"].T


def swiglu(x, gate, up, down):
    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def moe(x, p, c):
    T, H = x.shape
    E, K = c["n_routed_experts"], c["num_experts_per_tok"]
    logits = x @ p["mlp.gate.weight"].T
    scores = logits.softmax(-1) if c.get("scoring_func", "softmax") == "softmax" else logits.sigmoid()
    method = c.get("topk_method", "greedy")
    bias = p.get("mlp.gate.e_score_correction_bias")
    choice = scores + bias if (method == "noaux_tc" and bias is not None) else scores.clone()
    G, TG = c.get("n_group", 1) or 1, c.get("topk_group", 1) or 1
    if method in ("noaux_tc", "group_limited_greedy") and G > 1:
        grouped = choice.view(T, G, E // G)
        gs = (grouped.topk(2, dim=-1)[0].sum(-1) if method == "noaux_tc" else grouped.max(-1)[0])
        keep = torch.zeros(T, G, dtype=torch.bool)
        keep.scatter_(1, gs.topk(TG, dim=-1)[1], True)
        choice = choice.masked_fill(~keep[:, :, None].expand(T, G, E // G).reshape(T, E),
                                    float("-inf"))
    idx = choice.topk(K, dim=-1)[1]
    w = scores.gather(1, idx)
    if K > 1 and c.get("norm_topk_prob", False):
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * c.get("routed_scaling_factor", 1.0)
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(K):
            e = int(idx[t, j])
            pe = f"mlp.experts.{e}."
            y[t] += w[t, j] * swiglu(x[t:t + 1], p[pe + "gate_proj.weight"], p[pe + "up_proj.weight"],
                                     p[pe + "down_proj.weight"])[0]
    if c.get("n_shared_experts"):
        y = y + swiglu(x, p["mlp.shared_experts.gate_proj.weight"],
                       p["mlp.shared_experts.up_proj.weight"],
                       p["mlp.shared_experts.down_proj.weight"])
    return y


def forward(w, c, tokens):
    eps = c.get("rms_norm_eps", 1e-6)
    x = w["model.embed_tokens.weight"][tokens]
    E = c.get("n_routed_experts") or 0
    for l in range(c["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        p = {k[len(pre):]: v for k, v in w.items() if k.startswith(pre)}
        x = x + attention(rms_norm(x, p["input_layernorm.weight"], eps), p, c)
        h = rms_norm(x, p["post_attention_layernorm.weight"], eps)
        if E and l >= c.get("first_k_dense_replace", 0) and l % c.get("moe_layer_freq", 1) == 0:
            x = x + moe(h, p, c)
        else:
            x = x + swiglu(h, p["mlp.gate_proj.weight"], p["mlp.up_proj.weight"],
                           p["mlp.down_proj.weight"])
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["embed_tokens.weight" if c.get("tie_word_embeddings") else "lm_head.weight"]
    return x @ head.T


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, tokens_file = sys.argv[1], sys.argv[2]
    c = json.load(open(os.path.join(d, "config.json")))
    if c.get("kv_lora_rank") or c.get("q_lora_rank"):
        sys.exit("MLA is not supported here")
    ids = [int(t) for t in open(tokens_file).read().split()]
    w = load_dir(d)
    tokens = torch.tensor(ids[:-1])
    targets = torch.tensor(ids[1:])
    with torch.no_grad():
        logits = forward(w, c, tokens)
        loss = torch.nn.functional.cross_entropy(logits, targets).item()
    print(f"logits {tuple(logits.shape)}: mean {logits.mean().item():.6g}, "
          f"std {logits.std().item():.6g}", file=sys.stderr)
    if "--logits" in sys.argv[3:]:
        for row in logits.tolist():
            print(" ".join(f"{v:.6g}" for v in row))
    print(f"{loss:.9g}")


if __name__ == "__main__":
    main()
