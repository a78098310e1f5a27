#!/opt/moerun-hf-venv/bin/python
"""HF transformers' own MLA (DeepseekV3Attention / DeepseekV2Attention) as the reference for
layers/mla: writes tests/golden/mla_<case>.bin.

The files are committed so the C++ tests (tests/common/golden_file.cpp reads them) need neither
torch nor transformers. Regenerate them with the venv of jobs/setup.sh:

    /opt/moerun-hf-venv/bin/python tests/golden/make_mla_golden.py            # next to this script
    /opt/moerun-hf-venv/bin/python tests/golden/make_mla_golden.py --check    # and read them back

Every case is seeded, so a rerun with the same torch gives identical bytes.

Format (little-endian): "MOERUNGD" | u32 version (=1) | u32 n_entries | entries, each:
  u32 name_len | name | u32 dtype (0 f32, 1 f64, 2 i32, 3 i64) | u32 ndim | i64 dims[ndim] | data

What runs: the attention module of transformers itself (eager attention, float64 parameters;
transformers keeps RoPE angles and the softmax in fp32 inside it), fed with the module's own
rotary embedding and a causal mask, on B sequences of T tokens. Inputs and weights are drawn at
random and rounded to fp32 first (the C++ side reads exactly these values). Stored: the config,
x, every weight under moerun's name (rows as HF's out x in), dy, out = attn(x), and the gradients
of sum(out * dy) w.r.t. x and every weight (autograd).
"""
import argparse
import os
import struct
import sys

import torch
from transformers import DeepseekV2Config, DeepseekV3Config
from transformers.models.deepseek_v2.modeling_deepseek_v2 import (DeepseekV2Attention,
                                                                  DeepseekV2RotaryEmbedding)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3Attention,
                                                                  DeepseekV3RotaryEmbedding)

MAGIC = b"MOERUNGD"
VERSION = 1
DTYPES = {"f32": 0, "f64": 1, "i32": 2, "i64": 3}
CODE_TO_STRUCT = {0: ("<f", 4), 1: ("<d", 8), 2: ("<i", 4), 3: ("<q", 8)}
CODE_TO_TORCH = {0: torch.float32, 1: torch.float64, 2: torch.int32, 3: torch.int64}

# V3's released values for mscale (mscale == mscale_all_dim: cos/sin unscaled, scores times
# mscale^2), and a pair that scales cos/sin too; a short original context so the YaRN ramp falls
# inside the few rotary dims of a test.
YARN = dict(factor=4.0, original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0,
            mscale=0.707, mscale_all_dim=0.707)
YARN_UNEQUAL = dict(YARN, factor=8.0, original_max_position_embeddings=32, beta_fast=16.0,
                    beta_slow=2.0, mscale=1.0, mscale_all_dim=0.5)

# model: 3 = DeepseekV3Attention, 2 = DeepseekV2Attention (always interleaved, complex RoPE).
CASES = [
    dict(name="v3_plain", model=3, B=2, T=7, H=16, n_head=2, q_lora_rank=0, kv_lora_rank=8,
         qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, rope_interleave=1,
         rope_theta=10000.0, yarn=0, seed=11),
    dict(name="v3_qlora_yarn", model=3, B=2, T=9, H=16, n_head=3, q_lora_rank=12,
         kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=6, v_head_dim=6,
         rope_interleave=1, rope_theta=10000.0, yarn=1, seed=22),
    dict(name="v3_rotate_half", model=3, B=1, T=8, H=12, n_head=2, q_lora_rank=10,
         kv_lora_rank=6, qk_nope_head_dim=4, qk_rope_head_dim=8, v_head_dim=4,
         rope_interleave=0, rope_theta=500.0, yarn=0, seed=33),
    dict(name="v2_yarn", model=2, B=2, T=6, H=16, n_head=2, q_lora_rank=0, kv_lora_rank=8,
         qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=6, rope_interleave=1,
         rope_theta=10000.0, yarn=1, yarn_params=YARN_UNEQUAL, seed=44),
]
INT_KEYS = ["model", "B", "T", "H", "n_head", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
            "qk_rope_head_dim", "v_head_dim", "rope_interleave", "yarn"]
# HF's attention-side RMSNorms (q_a_layernorm, kv_a_layernorm) use their default eps = 1e-6.
NORM_EPS = 1e-6


def yarn_params(c):
    return c.get("yarn_params", YARN)


def hf_config(c):
    rope = {"rope_type": "default", "rope_theta": c["rope_theta"]}
    if c["yarn"]:
        rope = {"rope_type": "yarn", "rope_theta": c["rope_theta"], **yarn_params(c)}
    common = dict(hidden_size=c["H"], num_attention_heads=c["n_head"],
                  num_key_value_heads=c["n_head"],
                  q_lora_rank=c["q_lora_rank"] if c["q_lora_rank"] > 0 else None,
                  kv_lora_rank=c["kv_lora_rank"], qk_nope_head_dim=c["qk_nope_head_dim"],
                  qk_rope_head_dim=c["qk_rope_head_dim"], v_head_dim=c["v_head_dim"],
                  max_position_embeddings=256, rope_parameters=rope, attention_bias=False,
                  num_hidden_layers=1, vocab_size=32)
    if c["model"] == 3:
        cfg = DeepseekV3Config(rope_interleave=bool(c["rope_interleave"]), **common)
    else:
        assert c["rope_interleave"] == 1, "DeepseekV2Attention always interleaves"
        cfg = DeepseekV2Config(**common)
    cfg._attn_implementation = "eager"
    return cfg


# moerun name -> HF module attribute path
NAMES = [("wq", "q_proj.weight"), ("wq_a", "q_a_proj.weight"), ("q_norm", "q_a_layernorm.weight"),
         ("wq_b", "q_b_proj.weight"), ("wkv_a", "kv_a_proj_with_mqa.weight"),
         ("kv_norm", "kv_a_layernorm.weight"), ("wkv_b", "kv_b_proj.weight"),
         ("wo", "o_proj.weight")]


def run_case(c):
    torch.manual_seed(c["seed"])
    cfg = hf_config(c)
    if c["model"] == 3:
        attn, rotary = DeepseekV3Attention(cfg, layer_idx=0), DeepseekV3RotaryEmbedding(cfg)
    else:
        attn, rotary = DeepseekV2Attention(cfg, layer_idx=0), DeepseekV2RotaryEmbedding(cfg)
    attn = attn.double()
    params = dict(attn.named_parameters())
    weights = {}
    with torch.no_grad():
        for ours, theirs in NAMES:
            if theirs not in params:
                continue
            p = params[theirs]
            if ours in ("q_norm", "kv_norm"):
                v = 1.0 + 0.2 * torch.randn(p.shape, dtype=torch.float64)
            else:  # large enough that the softmax is far from uniform
                v = torch.randn(p.shape, dtype=torch.float64) * (1.2 / p.shape[1] ** 0.5)
            p.copy_(v.float().double())
            weights[ours] = p
    B, T, H = c["B"], c["T"], c["H"]
    x = torch.randn(B, T, H, dtype=torch.float64).float().double().requires_grad_(True)
    dy = torch.randn(B, T, H, dtype=torch.float64).float().double()
    pos = torch.arange(T).unsqueeze(0).expand(B, T)
    pe = rotary(x, pos)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    if c["model"] == 3:
        out, _ = attn(x, position_embeddings=pe, attention_mask=mask)
    else:
        out, _ = attn(x, attention_mask=mask, position_embeddings=pe)
    (out * dy).sum().backward()

    ents = []
    for k in INT_KEYS:
        ents.append(("config." + k, DTYPES["i64"], torch.tensor(c[k], dtype=torch.int64)))
    ents.append(("config.rope_theta", DTYPES["f64"], torch.tensor(c["rope_theta"])))
    ents.append(("config.norm_eps", DTYPES["f64"], torch.tensor(NORM_EPS)))
    for k in ["factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
              "mscale_all_dim"]:
        ents.append(("yarn." + k, DTYPES["f64"], torch.tensor(float(yarn_params(c)[k]))))
    ents.append(("x", DTYPES["f32"], x.detach().reshape(B * T, H)))
    for ours, _ in NAMES:
        if ours in weights:
            ents.append((ours, DTYPES["f32"], weights[ours].detach()))
    ents.append(("dy", DTYPES["f32"], dy.reshape(B * T, H)))
    ents.append(("out", DTYPES["f64"], out.detach().reshape(B * T, H)))
    ents.append(("dx", DTYPES["f64"], x.grad.reshape(B * T, H)))
    for ours, _ in NAMES:
        if ours in weights:
            ents.append(("d" + ours, DTYPES["f64"], weights[ours].grad))
    return ents


def write_file(path, ents):
    buf = bytearray(MAGIC)
    buf += struct.pack("<II", VERSION, len(ents))
    for name, code, t in ents:
        t = t.detach().to(CODE_TO_TORCH[code]).contiguous()
        nb = name.encode("ascii")
        buf += struct.pack("<I", len(nb)) + nb
        buf += struct.pack("<II", code, t.dim())
        for d in t.shape:
            buf += struct.pack("<q", d)
        fmt, _ = CODE_TO_STRUCT[code]
        for v in t.reshape(-1).tolist():
            buf += struct.pack(fmt, v)
    with open(path, "wb") as fh:
        fh.write(bytes(buf))
    return len(buf)


def read_file(path):
    """Independent reader mirroring tests/common/golden_file.cpp."""
    with open(path, "rb") as fh:
        b = fh.read()
    if b[:8] != MAGIC:
        raise ValueError(f"{path}: bad magic")
    version, n = struct.unpack_from("<II", b, 8)
    pos = 16
    ents = {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<I", b, pos)
        pos += 4
        name = b[pos:pos + ln].decode("ascii")
        pos += ln
        code, ndim = struct.unpack_from("<II", b, pos)
        pos += 8
        shape = list(struct.unpack_from("<" + "q" * ndim, b, pos))
        pos += 8 * ndim
        numel = 1
        for d in shape:
            numel *= d
        fmt, sz = CODE_TO_STRUCT[code]
        vals = struct.unpack_from("<" + fmt[1] * numel, b, pos)
        pos += sz * numel
        ents[name] = torch.tensor(vals, dtype=CODE_TO_TORCH[code]).reshape(shape)
    if pos != len(b):
        raise ValueError(f"{path}: {len(b) - pos} trailing bytes")
    return ents


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for c in CASES:
        ents = run_case(c)
        path = os.path.join(args.out_dir, f"mla_{c['name']}.bin")
        n = write_file(path, ents)
        print(f"{path}: {len(ents)} entries, {n} bytes")
        if args.check:
            back = read_file(path)
            for name, code, t in ents:
                want = t.detach().to(CODE_TO_TORCH[code])
                if list(back[name].shape) != list(want.shape) or not torch.equal(back[name], want):
                    sys.exit(f"{path}: entry {name} differs after reading back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
