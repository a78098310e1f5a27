#!/usr/bin/env bash
# Plots one training run's metrics.jsonl with gnuplot.
#
# Usage: jobs/plot.sh RUN_DIR [OUT_DIR]
#   RUN_DIR  a `moerun train --out` directory holding metrics.jsonl
#   OUT_DIR  where the PNGs go (default: RUN_DIR); created if missing
# Writes loss.png (train loss, val_loss at evals), maxvio.png (MaxVio_batch averaged over MoE
# layers, MaxVio_global at evals) and throughput.png (tokens/s), and prints their paths.
# A plot whose data is absent (e.g. no maxvio in a dense run) is skipped with a note on stderr.
# Works on a run still in progress: a half-written last line is skipped.
# Needs gnuplot (Debian: gnuplot-nox) and python3 (stdlib only).
set -euo pipefail
prog=plot.sh

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }
die() { echo "$prog: error: $*" >&2; exit 1; }

case ${1:-} in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; echo "$prog: error: missing RUN_DIR" >&2; exit 2 ;;
  -*) usage >&2; echo "$prog: error: unknown option '$1'" >&2; exit 2 ;;
esac
[[ $# -le 2 ]] || { usage >&2; echo "$prog: error: too many arguments" >&2; exit 2; }
run_dir=$1
out_dir=${2:-$run_dir}

[[ -e $run_dir ]] || die "run directory '$run_dir' does not exist"
[[ -d $run_dir ]] || die "'$run_dir' is not a directory"
metrics=$run_dir/metrics.jsonl
[[ -f $metrics ]] || die "no metrics.jsonl in '$run_dir' (is it a 'moerun train --out' directory?)"
[[ -s $metrics ]] || die "'$metrics' is empty: no train lines to plot"
command -v gnuplot >/dev/null 2>&1 || die "gnuplot not found (install the Debian package gnuplot-nox)"
if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3
elif command -v python3 >/dev/null 2>&1; then py=python3
else die "python3 not found"; fi
mkdir -p "$out_dir" || die "cannot create output directory '$out_dir'"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moerun-plot.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# JSONL -> train.dat (step loss tokens_per_s maxvio_batch_mean) and eval.dat (step val_loss
# maxvio_global_mean); "?" marks a missing value. Prints shell assignments with counts.
"$py" - "$metrics" "$tmp" <<'EOF' >"$tmp/counts.sh" || die "could not read '$metrics'"
import json, math, sys

metrics, tmp = sys.argv[1], sys.argv[2]

def num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        return None
    return float(v)

def mean(vs):
    vs = [num(v) for v in vs] if isinstance(vs, list) else []
    vs = [v for v in vs if v is not None]
    return sum(vs) / len(vs) if vs else None

def fmt(v):
    return "?" if v is None else repr(v)

n = {"train": 0, "loss": 0, "tps": 0, "mvb": 0, "val": 0, "mvg": 0, "bad": 0}
title = ""
with open(metrics, encoding="utf-8", errors="replace") as f, \
     open(tmp + "/train.dat", "w") as tr, open(tmp + "/eval.dat", "w") as ev:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            n["bad"] += 1
            continue
        if not isinstance(rec, dict):
            n["bad"] += 1
            continue
        kind, step = rec.get("type"), num(rec.get("step"))
        if kind == "run":
            parts = [f"{k} {rec[k]}" for k in ("preset", "ranks", "ep") if k in rec]
            title = ", ".join(parts)
        elif kind == "train" and step is not None:
            loss, tps, mvb = num(rec.get("loss")), num(rec.get("tokens_per_s")), mean(rec.get("maxvio_batch"))
            n["train"] += 1
            n["loss"] += loss is not None
            n["tps"] += tps is not None
            n["mvb"] += mvb is not None
            tr.write(f"{fmt(step)} {fmt(loss)} {fmt(tps)} {fmt(mvb)}\n")
        elif kind == "eval" and step is not None:
            val, mvg = num(rec.get("val_loss")), mean(rec.get("maxvio_global"))
            n["val"] += val is not None
            n["mvg"] += mvg is not None
            ev.write(f"{fmt(step)} {fmt(val)} {fmt(mvg)}\n")
for k, v in n.items():
    print(f"n_{k}={v}")
# A title for gnuplot's noenhanced string: keep it free of quotes.
print("run_title='" + title.replace("'", "").replace('"', "") + "'")
EOF
n_train=0 n_loss=0 n_tps=0 n_mvb=0 n_val=0 n_mvg=0 n_bad=0 run_title=""
# shellcheck disable=SC1091
source "$tmp/counts.sh"

if (( n_bad > 0 )); then
  echo "$prog: note: skipped $n_bad unreadable line(s) in '$metrics'" >&2
fi
(( n_train > 0 )) || die "no train lines in '$metrics'"
(( n_loss > 0 )) || die "train lines in '$metrics' carry no loss values"

if gnuplot -e "set terminal pngcairo" >/dev/null 2>&1; then
  term="set terminal pngcairo size 1000,600 noenhanced font ',11'"
else
  term="set terminal png size 1000,600 noenhanced"
fi
name=$(basename "$(cd "$run_dir" && pwd)")
title="$name${run_title:+ ($run_title)}"
title=${title//\"/}

gp=$tmp/plot.gp
written=()
{
  echo "$term"
  echo 'set datafile missing "?"'
  echo 'set grid'
  echo 'set key top right'
  echo 'set xlabel "step"'

  echo "set output \"$tmp/loss.png\""
  echo "set title \"loss: $title\""
  echo 'set ylabel "loss"'
  if (( n_val > 0 )); then
    echo "plot \"$tmp/train.dat\" using 1:2 with lines lw 1.5 title \"train loss\", \\"
    echo "     \"$tmp/eval.dat\" using 1:2 with linespoints pt 7 ps 1.2 lw 1.5 title \"val loss\""
  else
    echo "plot \"$tmp/train.dat\" using 1:2 with lines lw 1.5 title \"train loss\""
  fi
  echo 'unset output'

  if (( n_mvb + n_mvg > 0 )); then
    echo "set output \"$tmp/maxvio.png\""
    echo "set title \"MaxVio (mean over MoE layers): $title\""
    echo 'set ylabel "MaxVio = max load / mean load - 1"'
    echo 'set yrange [0:*]'
    plots=()
    (( n_mvb > 0 )) && plots+=("\"$tmp/train.dat\" using 1:4 with lines lw 1.5 title \"MaxVio_batch\"")
    (( n_mvg > 0 )) && plots+=("\"$tmp/eval.dat\" using 1:3 with linespoints pt 7 ps 1.2 lw 1.5 title \"MaxVio_global (eval)\"")
    (IFS=,; echo "plot ${plots[*]}")
    echo 'unset output'
    echo 'set autoscale y'
  fi

  if (( n_tps > 0 )); then
    echo "set output \"$tmp/throughput.png\""
    echo "set title \"throughput: $title\""
    echo 'set ylabel "tokens/s"'
    echo 'set yrange [0:*]'
    echo "plot \"$tmp/train.dat\" using 1:3 with lines lw 1.5 title \"tokens/s\""
    echo 'unset output'
  fi
} >"$gp"

gnuplot "$gp" 2>"$tmp/gnuplot.err" || {
  cat "$tmp/gnuplot.err" >&2
  die "gnuplot failed on '$metrics'"
}

for png in loss maxvio throughput; do
  if [[ -s $tmp/$png.png ]]; then
    mv -f "$tmp/$png.png" "$out_dir/$png.png"
    written+=("$out_dir/$png.png")
  elif [[ $png == maxvio ]]; then
    echo "$prog: note: no maxvio_batch/maxvio_global values; maxvio.png not written" >&2
  elif [[ $png == throughput ]]; then
    echo "$prog: note: no tokens_per_s values; throughput.png not written" >&2
  else
    die "gnuplot wrote no $png.png"
  fi
done
printf '%s\n' "${written[@]}"
