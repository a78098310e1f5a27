#!/usr/bin/env bash
# Scaling studies: slurm/scaling-study.sh --launcher mpirun runs a 3-point weak-scaling study
# (1 and 2 ranks, EP 1 and 2; EP 2 on 1 rank is skipped) of the tiny preset and collects it: the
# CSV has its columns, one row per point, tokens/s > 0 and efficiency 1 for each series' base;
# both PNGs exist. Then `moerun scale collect` on a results directory with a missing and a
# half-written run (and two hand-written strong-scaling runs whose figures are known) names both
# bad runs, still writes the rest, and computes the strong-scaling efficiency; a directory with
# no usable run exits non-zero. No Slurm needed (tests/slurm/ covers the sbatch path).
# Args: <path to moerun> <source dir>
# ok() and bad() always succeed, so `test && ok || bad` is a safe if-then-else here.
# shellcheck disable=SC2015,SC2001,SC1091
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=python3; fi
ok() { echo "ok:   $*"; }
bad() { echo "FAIL: $*"; fail=1; }
is_png() { [[ -s $1 ]] && [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; }

source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 6 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

# ---- a 3-point study through mpirun ------------------------------------------------------------
res=$tmp/study
out=$(timeout 400 bash "$SRC/slurm/scaling-study.sh" --launcher mpirun --moerun "$MOERUN" \
  --data "$tmp/d.h5" --nodes 1 --ranks-per-node 1,2 --ep 1,2 --kinds weak --steps 6 --warmup 2 \
  "$res" 2>&1); rc=$?
csv=$res/scaling.csv
if [[ $rc -ne 0 || ! -s $csv ]]; then
  bad "scaling-study.sh --launcher mpirun -> exit $rc, CSV ${csv} $([[ -s $csv ]] || echo missing)"
  sed 's/^/    /' <<<"$out"
  for l in "$res"/*/train.log; do [[ -f $l ]] && { echo "  $l:"; tail -5 "$l" | sed 's/^/    /'; }; done
else
  grep -q "skip  weak-ep2-n1x1: EP 2 does not divide 1 ranks" <<<"$out" \
    && ok "the plan skips EP 2 on 1 rank" || bad "no skip line for weak-ep2-n1x1: $out"
  for png in scaling_throughput scaling_efficiency; do
    is_png "$res/$png.png" && ok "$png.png written" || bad "$res/$png.png missing or not a PNG"
  done
  # Columns, rows and sanity, checked by name.
  if check=$("$PY" - "$csv" <<'EOF' 2>&1
import csv, sys
want = ("run,kind,series,nodes,ranks,ranks_per_node,ep,expert_dp,global_batch,seq_len,steps,"
        "steps_used,tokens_per_s,tokens_per_s_per_rank,step_s_median,step_s_p5,step_s_p95,"
        "alltoall_share,inter_node_bytes_per_step,intra_node_bytes_per_step,maxvio,maxvio_source,"
        "speedup,efficiency,base_run").split(",")
with open(sys.argv[1]) as f:
    rows = list(csv.DictReader(f))
    f.seek(0)
    header = f.readline().strip().split(",")
problems = []
if header != want:
    problems.append(f"header {header}")
runs = {r["run"]: r for r in rows}
expect = {"weak-ep1-n1x1": (1, 1, 2), "weak-ep1-n1x2": (2, 1, 4), "weak-ep2-n1x2": (2, 2, 4)}
if sorted(runs) != sorted(expect):
    problems.append(f"runs {sorted(runs)}")
for name, (ranks, ep, gb) in expect.items():
    r = runs.get(name)
    if not r:
        continue
    got = (int(r["ranks"]), int(r["ep"]), int(r["global_batch"]))
    if got != (ranks, ep, gb):
        problems.append(f"{name}: ranks/ep/global_batch {got}")
    if r["kind"] != "weak" or r["series"] != f"ep={ep}" or r["steps"] != "6" or r["steps_used"] != "4":
        problems.append(f"{name}: kind/series/steps {r['kind']} {r['series']} {r['steps']} {r['steps_used']}")
    tps, tpr = float(r["tokens_per_s"]), float(r["tokens_per_s_per_rank"])
    if not (tps > 0 and abs(tpr * ranks - tps) <= 1e-3 * tps):
        problems.append(f"{name}: tokens/s {tps}, per rank {tpr}")
    p5, p50, p95 = float(r["step_s_p5"]), float(r["step_s_median"]), float(r["step_s_p95"])
    if not (0 < p5 <= p50 <= p95):
        problems.append(f"{name}: step times p5 {p5} median {p50} p95 {p95}")
    if abs(tps - 128 * gb / p50) > 1e-3 * tps:
        problems.append(f"{name}: tokens/s {tps} != tokens per step / median step time")
    share = r["alltoall_share"]
    if share and not 0 <= float(share) <= 1:
        problems.append(f"{name}: alltoall_share {share}")
    if not r["maxvio"] or float(r["maxvio"]) < 0 or r["maxvio_source"] != "eval_global":
        problems.append(f"{name}: maxvio {r['maxvio']} from {r['maxvio_source']}")
    base = "weak-ep1-n1x1" if ep == 1 else "weak-ep2-n1x2"
    if r["base_run"] != base or float(r["efficiency"]) <= 0:
        problems.append(f"{name}: base {r['base_run']}, efficiency {r['efficiency']}")
for base in ("weak-ep1-n1x1", "weak-ep2-n1x2"):
    if base in runs and runs[base]["efficiency"] != "1.0000":
        problems.append(f"{base}: efficiency of the base run is {runs[base]['efficiency']}")
r1, r2 = runs.get("weak-ep1-n1x1"), runs.get("weak-ep1-n1x2")
if r1 and r2:
    e = float(r2["tokens_per_s_per_rank"]) / float(r1["tokens_per_s_per_rank"])
    if abs(float(r2["efficiency"]) - e) > 1e-3:
        problems.append(f"weak-ep1-n1x2: efficiency {r2['efficiency']}, per-rank ratio {e:.4f}")
print("; ".join(problems))
sys.exit(1 if problems else 0)
EOF
  ); then ok "CSV: 25 columns, 3 rows, sane numbers, base efficiency 1"
  else bad "CSV: $check"; sed 's/^/    /' "$csv"; fi
  [[ ! -e $res/weak-ep1-n1x1/ckpt ]] && ok "the study removes the runs' checkpoints" \
    || bad "the study left $res/weak-ep1-n1x1/ckpt"
fi

# ---- collect with a missing and a half-written run ------------------------------------------
# Strong-scaling runs written by hand: 8 sequences x 128 tokens = 1024 per step; 1 rank at 1.0 s,
# 2 ranks (2 fake hosts) at 0.625 s -> speedup 1.6, efficiency 0.8; inter-node bytes 3000.
mix=$tmp/mix
mkdir -p "$mix"
[[ -d $res/weak-ep1-n1x1 ]] && cp -r "$res/weak-ep1-n1x1" "$mix/"
"$PY" - "$mix" <<'EOF'
import json, os, sys
mix = sys.argv[1]
def run(name, ranks, hosts, secs, steps=5, lines=None, cut=False, study=True):
    d = f"{mix}/{name}"
    os.makedirs(d)
    with open(f"{d}/config.ini", "w") as f:
        f.write(f"# effective options\nsteps = {steps}\nglobal-batch = 8\nseq-len = 128\n")
    if study:
        with open(f"{d}/study.ini", "w") as f:
            f.write("kind = strong\nseries = ep=all\n")
    with open(f"{d}/metrics.jsonl", "w") as f:
        f.write(json.dumps({"type": "run", "ranks": ranks, "ep": ranks, "expert_dp": 1,
                            "nodes": len(set(hosts)), "ranks_per_node": 1, "hosts": hosts,
                            "global_batch": 8, "seq_len": 128, "tokens_per_step": 1024,
                            "launcher": "slurm", "slurm_job_id": "7"}) + "\n")
        for s in range(1, (lines or steps) + 1):
            t = 9.0 if s == 1 else secs  # step 1 (warm-up) is slow and must not count
            f.write(json.dumps({"type": "train", "step": s, "loss": 5.0, "tokens_per_s": 1024 / t,
                                "step_seconds": t, "time": {"compute": t / 2, "alltoall": t / 4,
                                "allreduce": 0.0, "optimizer": 0.0},
                                "a2a_bytes": {"intra_node": 0, "inter_node": 3000 * (ranks - 1)},
                                "maxvio_batch": [0.2, 0.4]}) + "\n")
        if cut:
            f.write('{"type": "train", "step": 4, "lo')
run("strong-a", 1, ["node1"], 1.0)
run("strong-b", 2, ["node1", "node2"], 0.625)
run("killed-run", 2, ["node1", "node2"], 0.5, steps=5, lines=3, cut=True)
os.makedirs(f"{mix}/never-started")
with open(f"{mix}/never-started/study.ini", "w") as f:
    f.write("kind = weak\n")
EOF
out=$(timeout 60 "$MOERUN" scale collect "$mix" --warmup 1 --out "$tmp/mix-out/table.csv" 2>&1); rc=$?
[[ $rc -eq 0 ]] && ok "collect with bad runs exits 0" || bad "collect with bad runs -> exit $rc: $out"
grep -q "skipped run 'never-started': no metrics.jsonl" <<<"$out" \
  && ok "the missing run is named with its reason" || bad "no warning naming never-started: $out"
grep -q "skipped run 'killed-run': metrics.jsonl ends in a truncated line" <<<"$out" \
  && ok "the half-written run is named with its reason" || bad "no warning naming killed-run: $out"
c=$tmp/mix-out/table.csv
if [[ -s $c ]]; then
  n=$(($(wc -l <"$c") - 1))
  want=$(( $([[ -d $mix/weak-ep1-n1x1 ]] && echo 1 || echo 0) + 2 ))
  [[ $n -eq $want ]] && ok "the rest is written ($n rows)" || bad "expected $want rows, got $n"; 
  grep -q '^strong-b,strong,ep=all,2,2,1,2,1,8,128,5,4,1638.4,819.2,0.625,0.625,0.625,0.2500,3000,0,0.3000,batch_mean,1.6000,0.8000,strong-a$' "$c" \
    && ok "strong scaling: speedup 1.6, efficiency 0.8, a2a share and bytes from the metrics" \
    || bad "strong-b row wrong: $(grep strong-b "$c")"
  grep -q '^strong-a,.*,1.0000,1.0000,strong-a$' "$c" && ok "strong base efficiency 1" \
    || bad "strong-a row wrong: $(grep strong-a "$c")"
  for png in scaling_throughput scaling_efficiency; do
    is_png "$tmp/mix-out/$png.png" || bad "--out: $png.png not beside the CSV"
  done
else
  bad "collect wrote no $c"
fi
# A truncated line after a complete run, a run with fewer steps: both named.
mkdir -p "$tmp/none"
cp -r "$mix/killed-run" "$mix/never-started" "$tmp/none/"
"$PY" - "$tmp/none/killed-run/metrics.jsonl" <<'EOF'
import sys
p = sys.argv[1]
lines = open(p).read().split("\n")
open(p, "w").write("\n".join(lines[:-1]) + "\n")  # drop the torn line: 3 of 5 steps remain
EOF
out=$(timeout 60 "$MOERUN" scale collect "$tmp/none" --no-plots 2>&1); rc=$?
[[ $rc -ne 0 ]] && ok "no usable run -> exit $rc" || bad "no usable run -> exit 0"
grep -q "skipped run 'killed-run': half-written: 3 of 5 train steps" <<<"$out" \
  && ok "a run with fewer steps than config.ini's is named" || bad "no half-written warning: $out"
grep -q "no run in .* could be collected" <<<"$out" && ok "clear message when nothing is left" \
  || bad "no clear error: $out"
out=$(timeout 60 "$MOERUN" scale collect "$tmp/nonexistent" 2>&1); rc=$?
[[ $rc -ne 0 ]] && grep -q "is not a directory" <<<"$out" && ok "a missing RESULTS_DIR is an error" \
  || bad "missing RESULTS_DIR -> exit $rc: $out"
out=$(bash "$SRC/slurm/scaling-study.sh" --launcher mpirun --nodes 1,2 "$tmp/x" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q "nodes must be 1" <<<"$out" && ok "mpirun with --nodes 2 is refused" \
  || bad "scaling-study.sh --launcher mpirun --nodes 1,2 -> exit $rc: $out"

exit $fail
