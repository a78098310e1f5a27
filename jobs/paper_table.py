#!/usr/bin/env python3
"""Loss-Free Balancing paper check: a Markdown table like the paper's Table 2 from run dirs.

Usage: jobs/paper_table.py RUN_DIR [RUN_DIR...]

Each RUN_DIR is a `moerun train --out` directory with metrics.jsonl; its name is the variant
(paper_check.sh names them loss-free, aux and none). Columns:
  validation loss  val_loss of the last eval line
  MaxVio_global    the last eval's maxvio_global, averaged over MoE layers
  tokens/s         median tokens_per_s over the train lines, the first one left out (warm-up)
Then the paper's reference row (1B model, 100B tokens) and a one-line reading that compares
loss-free with aux. A missing value prints as n/a with a warning on stderr.
Exit status: 0 table printed, 1 a run dir or its metrics.jsonl is missing or has no lines,
2 usage. Stdlib only.
"""
import json
import math
import os
import statistics
import sys

PROG = "paper_table.py"
# Loss-Free Balancing paper, Table 2 (1B: 9 MoE layers, 2 shared + 64 routed, K 6, 100B tokens).
PAPER = {"loss-free": {"ppl": 9.50, "maxvio_global": 0.04},
         "aux": {"ppl": 9.56, "maxvio_global": 0.72}}


class RunError(Exception):
    pass


def num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def layer_mean(vs):
    if not isinstance(vs, list):
        return None
    vs = [num(v) for v in vs]
    if not vs or any(v is None for v in vs):
        return None
    return sum(vs) / len(vs)


def variant_of(run_dir):
    name = os.path.basename(os.path.normpath(run_dir))
    key = name.lower().replace("_", "-")
    if key in ("loss-free", "lossfree", "lfb") or key.startswith("loss-free"):
        kind = "loss-free"
    elif key.startswith("aux"):
        kind = "aux"
    elif key.startswith("none"):
        kind = "none"
    else:
        kind = None
    return name, kind


def read_run(run_dir):
    if not os.path.isdir(run_dir):
        raise RunError(f"run directory '{run_dir}' does not exist")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise RunError(f"no metrics.jsonl in '{run_dir}'")
    train_tps, last_eval, last_step, bad, lines = [], None, None, 0, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            lines += 1
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1  # a half-written last line of a live run, or junk
                continue
            if not isinstance(rec, dict):
                bad += 1
                continue
            if rec.get("type") == "train":
                last_step = rec.get("step", last_step)
                tps = num(rec.get("tokens_per_s"))
                if tps is not None:
                    train_tps.append(tps)
            elif rec.get("type") == "eval":
                last_eval = rec
    if lines == 0:
        raise RunError(f"'{path}' is empty")
    if bad:
        print(f"{PROG}: warning: skipped {bad} unreadable line(s) in '{path}'", file=sys.stderr)
    name, kind = variant_of(run_dir)
    row = {"name": name, "kind": kind, "val_loss": None, "maxvio_global": None,
           "tokens_per_s": None, "eval_step": None, "last_step": last_step}
    if last_eval is None:
        print(f"{PROG}: warning: no eval lines in '{path}'", file=sys.stderr)
    else:
        row["eval_step"] = last_eval.get("step")
        row["val_loss"] = num(last_eval.get("val_loss"))
        row["maxvio_global"] = layer_mean(last_eval.get("maxvio_global"))
        if row["val_loss"] is None:
            print(f"{PROG}: warning: last eval in '{path}' has no val_loss", file=sys.stderr)
        if row["maxvio_global"] is None:
            print(f"{PROG}: warning: last eval in '{path}' has no maxvio_global", file=sys.stderr)
    tps = train_tps[1:] if len(train_tps) > 1 else train_tps
    if tps:
        row["tokens_per_s"] = statistics.median(tps)
    else:
        print(f"{PROG}: warning: no tokens_per_s in the train lines of '{path}'", file=sys.stderr)
    return row


def cell(v, spec):
    return "n/a" if v is None else format(v, spec)


def reading(rows):
    by = {}
    for r in rows:
        if r["kind"] and r["kind"] not in by:
            by[r["kind"]] = r
    lf, aux = by.get("loss-free"), by.get("aux")
    if not lf or not aux:
        return "Reading: no comparison (needs runs named loss-free and aux)."
    mv_lf, mv_aux, l_lf, l_aux = lf["maxvio_global"], aux["maxvio_global"], lf["val_loss"], aux["val_loss"]
    if None in (mv_lf, mv_aux, l_lf, l_aux):
        return "Reading: no comparison (loss-free or aux lacks a val_loss or MaxVio_global)."
    paper_ratio = PAPER["loss-free"]["maxvio_global"] / PAPER["aux"]["maxvio_global"]
    balance_ok = mv_lf < mv_aux
    loss_ok = l_lf <= l_aux
    ratio = f"{mv_lf / mv_aux:.2f}x" if mv_aux > 0 else "n/a"
    text = (f"MaxVio_global loss-free {mv_lf:.3f} vs aux {mv_aux:.3f} ({ratio}; paper {paper_ratio:.2f}x), "
            f"val loss {l_lf:.4f} vs {l_aux:.4f} ({l_lf - l_aux:+.4f})")
    if balance_ok and loss_ok:
        verdict = "agrees with the paper: loss-free balances better at no loss cost"
    elif balance_ok:
        verdict = "partly agrees: loss-free balances better but its val loss is higher"
    elif loss_ok:
        verdict = "disagrees on balance: aux balances better (too few steps for the bias to act?)"
    else:
        verdict = "disagrees with the paper: loss-free is worse on both balance and val loss"
    return f"Reading: {text}; {verdict}."


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        out = sys.stdout if len(argv) >= 2 else sys.stderr
        print(__doc__.strip(), file=out)
        return 0 if len(argv) >= 2 else 2
    rows = []
    for run_dir in argv[1:]:
        try:
            rows.append(read_run(run_dir))
        except RunError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"{PROG}: error: cannot read '{run_dir}': {e}", file=sys.stderr)
            return 1
    print("| variant | validation loss | MaxVio_global | tokens/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {cell(r['val_loss'], '.4f')} | {cell(r['maxvio_global'], '.3f')} "
              f"| {cell(r['tokens_per_s'], '.0f')} |")
    p_lf, p_aux = PAPER["loss-free"], PAPER["aux"]
    print(f"| paper 1B, loss-free vs aux | ppl {p_lf['ppl']:.2f} vs {p_aux['ppl']:.2f} "
          f"| {p_lf['maxvio_global']:.2f} vs {p_aux['maxvio_global']:.2f} | - |")
    print()
    print(reading(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
