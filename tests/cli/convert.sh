#!/usr/bin/env bash
# `moerun convert` end to end: train the tiny preset for 2 steps on 1 rank, export it to HF
# safetensors (f32, several shards), check config.json, the index and every shard header, import
# the export back into a new checkpoint and export that again: the two exports must be bitwise
# identical (also in bf16). `moerun train --resume` runs from the imported checkpoint; --reshard
# copies (with and without optimizer state); MLA fields in a V1 (model_type deepseek) config.json are
# refused naming kv_lora_rank; --check-loss --logits-out writes the logits as .npy;
# --from hf into a directory that holds a checkpoint is refused, and --force replaces it whole;
# tests/golden/hf_logits_check.py (PyTorch, HF semantics) computes the same loss on a token
# sequence as `moerun convert --check-loss` when torch is available.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

conv() { timeout 300 "$MOERUN" convert "$@"; }
must() {  # description command...: the command must exit 0
  local what=$1; shift
  local out rc
  LAST_OUT=
  out=$("$@" 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: $what -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1; return 1
  fi
  LAST_OUT=$out
  echo "ok:   $what"
}

# ---- a tiny dataset and 2 steps of the tiny preset on 1 rank ----------------------------------
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 100
ck=$tmp/ck
must "moerun train (tiny, 2 steps, 1 rank)" timeout 300 "$MOERUN" train \
  --config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps 2 --warmup-steps 1 \
  --eval-every 0 --eval-batches 1 --out "$tmp/run" --ckpt-dir "$ck" || exit 1

# ---- --to hf (f32, shards of at most 2 MB) -----------------------------------------------------
must "convert --to hf --dtype f32" conv --to hf "$ck" "$tmp/hf1" --dtype f32 --max-shard-gb 0.002 || exit 1
grep -q "topk_method noaux_tc" <<<"$LAST_OUT" || { echo "FAIL: the routing choice is not reported"; fail=1; }
grep -q "optimizer tensors not exported" <<<"$LAST_OUT" || { echo "FAIL: optimizer state not mentioned"; fail=1; }
n=$(grep -c "^\[r0 info\] moerun convert: \[" <<<"$LAST_OUT")
[[ $n -ge 20 ]] || { echo "FAIL: expected a progress line per tensor, got $n"; fail=1; }
grep "peak RSS" <<<"$LAST_OUT" | sed 's/^/      /'
grep -q "peak RSS .* largest tensor" <<<"$LAST_OUT" || { echo "FAIL: no peak RSS line"; fail=1; }

# config.json fields, the index, every shard header (json + struct: no safetensors package).
out=$(python3 - "$tmp/hf1" <<'EOF' 2>&1
import json, os, struct, sys
d = sys.argv[1]
c = json.load(open(os.path.join(d, "config.json")))
want = {"model_type": "deepseek", "vocab_size": 257, "hidden_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 4, "first_k_dense_replace": 1,
        "intermediate_size": 344, "n_routed_experts": 16, "moe_intermediate_size": 64,
        "n_shared_experts": 1, "num_experts_per_tok": 2, "scoring_func": "softmax",
        "norm_topk_prob": False, "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1,
        "torch_dtype": "float32", "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "rope_theta": 10000, "tie_word_embeddings": False}
bad = [f"{k}={c.get(k)!r} (want {v!r})" for k, v in want.items() if c.get(k) != v]
assert not bad, "config.json: " + ", ".join(bad)
assert c["architectures"] == ["DeepseekForCausalLM"], c["architectures"]
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
wm = idx["weight_map"]
files = sorted(set(wm.values()))
assert len(files) >= 2, f"expected several shards, got {files}"
on_disk = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
assert files == on_disk, (files, on_disk)
sizes = {"F32": 4, "BF16": 2}
total = 0
seen = {}
for f in files:
    b = open(os.path.join(d, f), "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    h = json.loads(b[8:8 + n])
    assert h.get("__metadata__", {}).get("format") == "pt", f
    h.pop("__metadata__", None)
    end = 0
    for name, e in h.items():
        assert e["dtype"] == "F32", (name, e["dtype"])
        numel = 1
        for s in e["shape"]:
            numel *= s
        b0, b1 = e["data_offsets"]
        assert b1 - b0 == numel * sizes[e["dtype"]], name
        end = max(end, b1)
        total += b1 - b0
        seen[name] = (f, e["shape"])
    assert 8 + n + end == len(b), f"{f}: data section size"
assert total == idx["metadata"]["total_size"], (total, idx["metadata"]["total_size"])
assert set(seen) == set(wm), set(seen) ^ set(wm)
assert all(wm[k] == seen[k][0] for k in wm)
# 3 + dense layer 9 + 3 MoE layers x (6 + gate + bias + 16 x 3 experts + 3 shared = 59)
assert len(seen) == 3 + 9 + 3 * 59, len(seen)
L = "model.layers."
assert seen[L + "1.mlp.experts.15.down_proj.weight"][1] == [128, 64]
assert seen[L + "1.mlp.gate.e_score_correction_bias"][1] == [16]
assert seen[L + "0.mlp.gate_proj.weight"][1] == [344, 128]
assert seen[L + "2.mlp.shared_experts.up_proj.weight"][1] == [64, 128]
assert seen["lm_head.weight"][1] == [257, 128]
print(f"{len(seen)} tensors in {len(files)} shards, total_size {total}")
EOF
); rc=$?
if [[ $rc -ne 0 ]]; then echo "FAIL: HF export checks"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   HF export: config.json, index and shard headers ($out)"; fi

# A non-empty OUT_DIR is refused without --force.
out=$(conv --to hf "$ck" "$tmp/hf1" --dtype f32 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "not empty" <<<"$out"; then
  echo "FAIL: a non-empty OUT_DIR -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   a non-empty OUT_DIR is refused (exit 1)"; fi

# ---- --from hf, then --to hf again: bitwise identical ------------------------------------------
ck2=$tmp/ck2
must "convert --from hf" conv --from hf "$tmp/hf1" "$ck2"
[[ -s $ck2/step_0/manifest.json && -s $ck2/model.ini && $(cat "$ck2/latest") == 0 ]] ||
  { echo "FAIL: --from hf did not commit step 0 with model.ini"; fail=1; }
must "convert --to hf (of the imported checkpoint)" conv --to hf "$ck2" "$tmp/hf2" --dtype f32 --max-shard-gb 0.002
same=1
for f in "$tmp"/hf1/*; do
  cmp -s "$f" "$tmp/hf2/$(basename "$f")" || { echo "FAIL: $(basename "$f") differs after the round trip"; same=0; fail=1; }
done
[[ $(ls "$tmp/hf1" | wc -l) -eq $(ls "$tmp/hf2" | wc -l) ]] || { echo "FAIL: the exports hold different files"; same=0; fail=1; }
[[ $same -eq 1 ]] && echo "ok:   HF -> moerun -> HF round trip is bitwise identical (f32, $(ls "$tmp/hf1" | wc -l) files)"

# The same in bf16 (bf16 -> f32 -> bf16 is exact), single shard, on 2 ranks (rank 0 works).
must "convert --to hf (bf16, 2 ranks)" timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" convert --to hf "$ck" "$tmp/hfb1"
must "convert --from hf (bf16)" conv --from hf "$tmp/hfb1" "$tmp/ckb"
must "convert --to hf (bf16 again)" conv --to hf "$tmp/ckb" "$tmp/hfb2"
if diff -rq "$tmp/hfb1" "$tmp/hfb2" >/dev/null; then echo "ok:   bf16 round trip is bitwise identical"
else echo "FAIL: bf16 round trip differs"; diff -rq "$tmp/hfb1" "$tmp/hfb2"; fail=1; fi

# ---- --from hf into a directory that holds a checkpoint: refused; --force replaces it -----------
# (train --resume picks the newest committed step: the old steps must not survive an import.)
cp -r "$ck" "$tmp/ck_old"
old_steps=$(cd "$tmp/ck_old" && ls -d step_* | tr '\n' ' ')
out=$(conv --from hf "$tmp/hf1" "$tmp/ck_old" 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "CKPT_DIR $tmp/ck_old is not empty (it holds committed step" <<<"$out" ||
  ! grep -q -- "--force" <<<"$out"; then
  echo "FAIL: --from hf into a checkpoint directory -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   --from hf into a checkpoint directory is refused: $(grep error <<<"$out" | cut -c1-150)"; fi
[[ $(cd "$tmp/ck_old" && ls -d step_* | tr '\n' ' ') == "$old_steps" && ! -e $tmp/ck_old/step_0 ]] ||
  { echo "FAIL: the refused import changed $tmp/ck_old"; fail=1; }
must "convert --from hf --force into a checkpoint directory" conv --from hf "$tmp/hf1" "$tmp/ck_old" --force
if [[ -n ${LAST_OUT:-} ]]; then
  grep -q -- "--force: replacing the checkpoint in $tmp/ck_old (committed step" <<<"$LAST_OUT" ||
    { echo "FAIL: --force does not say what it replaces"; echo "$LAST_OUT" | sed 's/^/    /'; fail=1; }
  left=$(cd "$tmp/ck_old" && ls -d step_* | tr '\n' ' ')
  [[ $left == "step_0 " && $(cat "$tmp/ck_old/latest") == 0 && -s $tmp/ck_old/step_0/manifest.json ]] ||
    { echo "FAIL: after --force the directory holds '$left', latest $(cat "$tmp/ck_old/latest")"; fail=1; }
  [[ $fail -eq 0 ]] && echo "ok:   --force replaced $old_steps with step_0 (latest 0)"
fi

# ---- train --resume from the imported checkpoint -----------------------------------------------
must "train --resume from the --from-hf checkpoint (1 step)" timeout 300 "$MOERUN" train \
  --config "$ck2/model.ini" --resume "$ck2" --data "$tmp/d.h5" --steps 1 --warmup-steps 1 \
  --global-batch 16 --micro-batch 8 --eval-every 0 --eval-batches 1 --out "$tmp/run2"
if [[ -n ${LAST_OUT:-} ]]; then
  grep -q "resumed from $ck2 step 0" <<<"$LAST_OUT" || { echo "FAIL: no 'resumed from' line"; echo "$LAST_OUT"; fail=1; }
  [[ $(grep -c '"type":"train"' "$tmp/run2/metrics.jsonl" 2>/dev/null) -eq 1 ]] || { echo "FAIL: expected 1 train step"; fail=1; }
fi

# ---- --hf-model-type deepseek_v2/v3 is for MLA models: an MHA model is refused -----------------
out=$(conv --to hf "$ck" "$tmp/hf_v3" --hf-model-type deepseek_v3 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "multi-head attention model" <<<"$out" || [[ -e $tmp/hf_v3/config.json ]]; then
  echo "FAIL: --hf-model-type deepseek_v3 of an MHA model -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   --hf-model-type deepseek_v3 of an MHA model is refused"; fi

# ---- MLA fields in a V1 config.json are refused, naming kv_lora_rank ----------------------------
cp -r "$tmp/hf1" "$tmp/mla"
python3 -c "
import json, sys; p = sys.argv[1]; c = json.load(open(p)); c['kv_lora_rank'] = 512
json.dump(c, open(p, 'w'))" "$tmp/mla/config.json"
out=$(conv --from hf "$tmp/mla" "$tmp/ck_mla" 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "kv_lora_rank" <<<"$out" || grep -q MPI_ABORT <<<"$out"; then
  echo "FAIL: MLA config -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   MLA config.json refused: $(grep error <<<"$out" | cut -c1-140)"; fi
[[ -e $tmp/ck_mla/latest ]] && { echo "FAIL: the refused import wrote a checkpoint"; fail=1; }

# ---- --reshard: a verified copy, with and without optimizer state ------------------------------
must "convert --reshard (2 ranks)" timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" convert --reshard "$ck" "$tmp/ck_copy"
grep -q "layout-independent" <<<"${LAST_OUT:-}" || { echo "FAIL: --reshard does not explain itself"; fail=1; }
must "convert --reshard --drop-optimizer" conv --reshard "$ck" "$tmp/ck_w" --drop-optimizer
out=$(python3 - "$ck" "$tmp/ck_copy" "$tmp/ck_w" <<'EOF' 2>&1
import json, os, sys
def man(d):
    s = open(os.path.join(d, "latest")).read().strip()
    return json.load(open(os.path.join(d, "step_" + s, "manifest.json")))
a, b, w = (man(d) for d in sys.argv[1:])
ta = {t["name"]: t for t in a["tensors"]}
tb = {t["name"]: t for t in b["tensors"]}
tw = {t["name"]: t for t in w["tensors"]}
assert a["step"] == b["step"] == w["step"]
assert ta.keys() == tb.keys()
assert all(ta[n]["crc32"] == tb[n]["crc32"] and ta[n]["shape"] == tb[n]["shape"] for n in ta)
assert a["meta"] == b["meta"]
assert set(tw) == {n for n in ta if not n.startswith("optim.")}, "drop-optimizer"
assert all(ta[n]["crc32"] == tw[n]["crc32"] for n in tw)
assert w["meta"].get("weights_only") is True
print(f"{len(tb)} tensors copied with equal CRCs; {len(tw)} without optimizer state")
EOF
); rc=$?
if [[ $rc -ne 0 ]]; then echo "FAIL: reshard checks"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   reshard: $out"; fi

# ---- the same loss from moerun and from an HF-semantics PyTorch model --------------------------
python3 -c "
import random; random.seed(5); print(' '.join(str(random.randrange(257)) for _ in range(33)))" >"$tmp/tokens.txt"
must "convert --check-loss (trained checkpoint)" conv --check-loss "$tmp/tokens.txt" "$ck"
l1=$(tail -n1 <<<"${LAST_OUT:-}")
must "convert --check-loss --logits-out (imported checkpoint)" conv --check-loss "$tmp/tokens.txt" "$ck2" \
  --logits-out "$tmp/logits.npy"
l2=$(tail -n1 <<<"${LAST_OUT:-}")
# The logits file: (32, 257) float32 whose cross-entropy on the next tokens is the printed loss.
out=$(python3 - "$tmp/logits.npy" "$tmp/tokens.txt" "$l2" <<'EOF' 2>&1
import ast, math, struct, sys
raw = open(sys.argv[1], "rb").read()  # .npy 1.0, read without numpy
assert raw[:8] == b"\x93NUMPY\x01\x00", raw[:8]
hlen = struct.unpack("<H", raw[8:10])[0]
head = ast.literal_eval(raw[10:10 + hlen].decode())
assert (10 + hlen) % 64 == 0, "header not padded to 64 bytes"
ids = [int(t) for t in open(sys.argv[2]).read().split()]
T, V = len(ids) - 1, 257
assert head == {"descr": "<f4", "fortran_order": False, "shape": (T, V)}, head
data = raw[10 + hlen:]
assert len(data) == T * V * 4, len(data)
x = struct.unpack(f"<{T * V}f", data)
ce = 0.0
for t in range(T):
    row = x[t * V:(t + 1) * V]
    m = max(row)
    ce += m + math.log(sum(math.exp(v - m) for v in row)) - row[ids[t + 1]]
ce /= T
assert abs(ce - float(sys.argv[3])) < 1e-5, (ce, sys.argv[3])
print(f"logits ({T}, {V}) float32, cross-entropy {ce:.7f} = the printed loss")
EOF
); rc=$?
if [[ $rc -ne 0 ]]; then echo "FAIL: --logits-out"; echo "$out" | sed 's/^/    /'; fail=1
else echo "ok:   --logits-out: $out"; fi
out=$(conv --logits-out "$tmp/x.npy" --reshard "$ck" "$tmp/ck_x" 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "needs --check-loss" <<<"$out"; then
  echo "FAIL: --logits-out without --check-loss -> exit $rc"; fail=1
else echo "ok:   --logits-out without --check-loss is refused"; fi
[[ -n $l1 && $l1 == "$l2" ]] || { echo "FAIL: losses of the trained and imported checkpoints differ: $l1 vs $l2"; fail=1; }
PYT=
for py in python3 /usr/bin/python3; do
  if "$py" -c "import torch, numpy" 2>/dev/null; then PYT=$py; break; fi
done
if [[ -n $PYT ]]; then
  out=$(timeout 300 "$PYT" "$SRC/tests/golden/hf_logits_check.py" "$tmp/hf1" "$tmp/tokens.txt" 2>&1); rc=$?
  lt=$(tail -n1 <<<"$out")
  if [[ $rc -ne 0 ]]; then echo "FAIL: hf_logits_check.py -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
  elif python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-4 * max(1, abs(a)))" "$l1" "$lt"; then
    echo "ok:   cross-entropy on 32 tokens: moerun $l1, HF-semantics PyTorch $lt"
  else echo "FAIL: moerun loss $l1 vs HF-semantics PyTorch loss $lt"; echo "$out" | sed 's/^/    /'; fail=1; fi
else
  echo "skip: torch is not installed: the HF-semantics loss check did not run"
fi

[[ $fail -eq 0 ]] && echo "all convert CLI checks passed"
exit $fail
