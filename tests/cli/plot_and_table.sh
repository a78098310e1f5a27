#!/usr/bin/env bash
# jobs/plot.sh, jobs/paper_table.py and jobs/paper_check.sh --dry-run on fake run directories
# (three variants, metrics.jsonl written here): the PNGs exist and are PNG files, the table's
# rows and numbers are right, and bad inputs exit non-zero with a message naming the script.
# Needs gnuplot (gnuplot-nox, installed by jobs/setup.sh); no moerun run, no MPI.
# Args: <path to moerun> <source dir>
# ok() and bad() always succeed, so `test && ok || bad` is a safe if-then-else here.
# shellcheck disable=SC2015,SC2001
set -euo pipefail
SRC=${2:?usage: plot_and_table.sh <path to moerun> <source dir>}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=python3; fi

ok() { echo "ok:   $*"; }
bad() { echo "FAIL: $*"; fail=1; }

# ---- fake runs -----------------------------------------------------------------------------
# loss-free: val 3.9, MaxVio_global [0.04, 0.06] -> 0.050; aux: 3.95, [0.70, 0.74] -> 0.720;
# none: 4.0, [1.5, 2.5] -> 2.000. tokens/s: first step 1000 (left out), then base-100, base,
# base+100, base+50 -> median base+25.
"$PY" - "$tmp" <<'EOF'
import json, os, sys
tmp = sys.argv[1]
runs = {"loss-free": (3.9, [0.04, 0.06], 5000), "aux": (3.95, [0.70, 0.74], 4000),
        "none": (4.0, [1.5, 2.5], 6000)}
for name, (val, mvg, base) in runs.items():
    os.makedirs(f"{tmp}/{name}")
    with open(f"{tmp}/{name}/metrics.jsonl", "w") as f:
        w = lambda rec: f.write(json.dumps(rec) + "\n")
        w({"type": "run", "preset": "tiny", "ranks": 2, "ep": 2, "params": 1234,
           "activated_params": 567, "tokens_per_step": 2048})
        tps = [1000, base - 100, base, base + 100, base + 50]
        for i, t in enumerate(tps):
            step = 10 * (i + 1)
            w({"type": "train", "step": step, "loss": 5.0 - 0.2 * i, "lr": 0.003, "grad_norm": 1.2,
               "tokens_per_s": float(t), "mfu": 0.21,
               "time": {"compute": 0.5, "alltoall": 0.05, "allreduce": 0.02, "optimizer": 0.01},
               "maxvio_batch": [0.3 + 0.01 * i, 0.4], "dropped": 0})
            if step in (20, 50):
                last = step == 50
                w({"type": "eval", "step": step, "val_loss": val if last else val + 0.5,
                   "maxvio_global": mvg if last else [9.0, 9.0],
                   "domains": {d: {"val_loss": val + 0.1, "maxvio_global": [0.3, 0.2]}
                               for d in ("prose", "code", "arithmetic")}})
                w({"type": "loads", "step": step, "layer_loads": [[10, 12, 9, 11], [8, 14, 10, 10]],
                   "dispatch_bytes": [[0, 100], [120, 0]]})
# A run still being written: no eval yet, a half-written last line.
os.makedirs(f"{tmp}/live")
with open(f"{tmp}/live/metrics.jsonl", "w") as f:
    f.write(json.dumps({"type": "run", "preset": "tiny", "ranks": 1}) + "\n")
    for s in (1, 2, 3):
        f.write(json.dumps({"type": "train", "step": s, "loss": 5.0 - s * 0.1, "tokens_per_s": 900.0,
                            "maxvio_batch": [0.5]}) + "\n")
    f.write('{"type": "train", "step": 4, "lo')
EOF

is_png() {  # file: non-empty and starts with the PNG signature
  [[ -s $1 ]] && [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]
}

# ---- plot.sh ---------------------------------------------------------------------------------
if ! command -v gnuplot >/dev/null 2>&1; then
  bad "gnuplot is not installed (jobs/setup.sh installs gnuplot-nox)"
else
  if out=$(bash "$SRC/jobs/plot.sh" "$tmp/loss-free" 2>&1); then
    for png in loss maxvio throughput; do
      if is_png "$tmp/loss-free/$png.png"; then ok "plot.sh wrote $png.png"
      else bad "plot.sh: $tmp/loss-free/$png.png missing or not a PNG"; fi
      grep -qxF "$tmp/loss-free/$png.png" <<<"$out" || bad "plot.sh did not print the path of $png.png: $out"
    done
  else
    bad "plot.sh on a complete run failed: $out"
  fi
  # OUT_DIR, and a live run (no evals, a torn last line).
  if out=$(bash "$SRC/jobs/plot.sh" "$tmp/live" "$tmp/plots/live" 2>&1); then
    n=0
    for png in loss maxvio throughput; do is_png "$tmp/plots/live/$png.png" && n=$((n + 1)); done
    if [[ $n -eq 3 ]]; then ok "plot.sh on a live run into OUT_DIR wrote 3 PNGs"
    else bad "plot.sh on a live run wrote $n of 3 PNGs: $out"; fi
    grep -q "skipped 1 unreadable line" <<<"$out" || bad "plot.sh did not note the torn line: $out"
  else
    bad "plot.sh on a live run failed: $out"
  fi
fi

plot_error() {  # label expected_message args...
  local label=$1 want=$2 out rc=0; shift 2
  out=$(bash "$SRC/jobs/plot.sh" "$@" 2>&1) || rc=$?
  if [[ $rc -eq 0 ]]; then bad "plot.sh $label: exit 0, expected an error"; return; fi
  if grep -q "^plot.sh: error: .*$want" <<<"$out"; then ok "plot.sh $label -> exit $rc: $out"
  else bad "plot.sh $label -> exit $rc, message lacks 'plot.sh: error: ...$want': $out"; fi
}
mkdir -p "$tmp/nometrics" "$tmp/empty" "$tmp/evalonly"
: >"$tmp/empty/metrics.jsonl"
printf '{"type": "run", "preset": "tiny"}\n{"type": "eval", "step": 5, "val_loss": 4.0}\n' \
  >"$tmp/evalonly/metrics.jsonl"
plot_error "missing dir" "does not exist" "$tmp/no_such_run"
plot_error "no metrics.jsonl" "no metrics.jsonl" "$tmp/nometrics"
plot_error "empty metrics" "empty" "$tmp/empty"
plot_error "no train lines" "no train lines" "$tmp/evalonly"
rc=0; bash "$SRC/jobs/plot.sh" >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] && ok "plot.sh without RUN_DIR -> exit 2" || bad "plot.sh without RUN_DIR -> exit $rc, expected 2"
bash "$SRC/jobs/plot.sh" --help | grep -q "Usage: jobs/plot.sh RUN_DIR" && ok "plot.sh --help" \
  || bad "plot.sh --help prints no usage"

# ---- paper_table.py --------------------------------------------------------------------------
if table=$("$PY" "$SRC/jobs/paper_table.py" "$tmp/loss-free" "$tmp/aux" "$tmp/none" 2>"$tmp/table.err"); then
  expect_line() {  # label line
    if grep -qxF -- "$2" <<<"$table"; then ok "table $1: $2"
    else bad "table lacks $1 line '$2'"; echo "$table" | sed 's/^/    /'; fi
  }
  expect_line header "| variant | validation loss | MaxVio_global | tokens/s |"
  expect_line loss-free "| loss-free | 3.9000 | 0.050 | 5025 |"
  expect_line aux "| aux | 3.9500 | 0.720 | 4025 |"
  expect_line none "| none | 4.0000 | 2.000 | 6025 |"
  expect_line paper "| paper 1B, loss-free vs aux | ppl 9.50 vs 9.56 | 0.04 vs 0.72 | - |"
  reading=$(grep '^Reading:' <<<"$table" || true)
  if [[ $(grep -c '^Reading:' <<<"$table") -eq 1 ]] && grep -q "agrees with the paper" <<<"$reading" \
     && grep -qF "0.050 vs aux 0.720" <<<"$reading"; then ok "table reading: $reading"
  else bad "table reading wrong: '$reading'"; fi
  [[ -s $tmp/table.err ]] && bad "paper_table.py warned on complete runs: $(cat "$tmp/table.err")"
else
  bad "paper_table.py failed: $(cat "$tmp/table.err")"
fi
# Swapped numbers: the reading must say it disagrees.
mkdir -p "$tmp/swap"
cp -r "$tmp/aux" "$tmp/swap/loss-free"; cp -r "$tmp/loss-free" "$tmp/swap/aux"
reading=$("$PY" "$SRC/jobs/paper_table.py" "$tmp/swap/loss-free" "$tmp/swap/aux" 2>&1 | grep '^Reading:' || true)
grep -q "disagrees" <<<"$reading" && ok "swapped runs: $reading" || bad "swapped runs reading: '$reading'"
# A run without evals: n/a cells, a warning, exit 0.
out=$("$PY" "$SRC/jobs/paper_table.py" "$tmp/live" 2>&1) && grep -qF "| live | n/a | n/a | 900 |" <<<"$out" \
  && grep -q "warning: no eval lines" <<<"$out" && ok "table on a run without evals: n/a + warning" \
  || bad "table on a run without evals: $out"

table_error() {  # label expected_message args...
  local label=$1 want=$2 out rc=0; shift 2
  out=$("$PY" "$SRC/jobs/paper_table.py" "$@" 2>&1) || rc=$?
  if [[ $rc -ne 0 ]] && grep -q "^paper_table.py: error: .*$want" <<<"$out"; then ok "paper_table.py $label -> exit $rc"
  else bad "paper_table.py $label -> exit $rc, expected an error naming '$want': $out"; fi
}
table_error "missing dir" "does not exist" "$tmp/loss-free" "$tmp/no_such_run"
table_error "no metrics.jsonl" "no metrics.jsonl" "$tmp/nometrics"
table_error "empty metrics" "is empty" "$tmp/empty"
rc=0; "$PY" "$SRC/jobs/paper_table.py" >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] && ok "paper_table.py without args -> exit 2" || bad "paper_table.py without args -> exit $rc"

# ---- paper_check.sh --dry-run ----------------------------------------------------------------
if out=$(bash "$SRC/jobs/paper_check.sh" --dry-run --steps 30 --ranks 4 --out "$tmp/pc" 2>/dev/null); then
  n=$(grep -c "mpirun -n 4 build/moerun train --config jobs/presets/tiny.ini --steps 30 --out $tmp/pc/" <<<"$out" || true)
  [[ $n -eq 3 ]] && ok "paper_check.sh --dry-run prints 3 train commands" \
    || bad "paper_check.sh --dry-run printed $n train commands: $out"
  for want in "--out $tmp/pc/loss-free --balance loss-free --bias-update sign --bias-update-rate 1e-3" \
              "--out $tmp/pc/aux --balance aux --aux-alpha1 1e-3" "--out $tmp/pc/none --balance none" \
              "paper_table.py $tmp/pc/loss-free $tmp/pc/aux $tmp/pc/none"; do
    grep -qF -- "$want" <<<"$out" || bad "paper_check.sh --dry-run lacks '$want': $out"
  done
  [[ -e $tmp/pc ]] && bad "paper_check.sh --dry-run created $tmp/pc"
else
  bad "paper_check.sh --dry-run failed: $out"
fi
rc=0; out=$(bash "$SRC/jobs/paper_check.sh" --steps 0 2>&1) || rc=$?
[[ $rc -eq 2 ]] && grep -q "^paper_check.sh: error: --steps" <<<"$out" && ok "paper_check.sh --steps 0 -> exit 2" \
  || bad "paper_check.sh --steps 0 -> exit $rc: $out"
rc=0; out=$(bash "$SRC/jobs/paper_check.sh" --preset no_such_preset --out "$tmp/pc" 2>&1) || rc=$?
[[ $rc -eq 1 ]] && grep -q "^paper_check.sh: error: no preset 'no_such_preset'" <<<"$out" \
  && ok "paper_check.sh unknown preset -> exit 1" || bad "paper_check.sh unknown preset -> exit $rc: $out"

exit $fail
