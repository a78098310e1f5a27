#!/usr/bin/env bash
# Bad settings of slurm/train.sbatch fail early, in the job log, with a clear message and a
# non-zero exit, and lose nothing: a run with a committed checkpoint is submitted again under its
# name with a required setting unset or empty, an unwritable CKPT_DIR, an EP size that does not
# divide the ranks (the template's check) or the experts (moerun's own check); afterwards every
# file of its checkpoint and run directories is byte-identical and nothing trained.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
source "$SRC/tests/slurm/lib.sh"
slurm_require 2 2
slurm_setup
fail=0
t0=$SECONDS

# ---- a run with a committed checkpoint (2 steps, one process, no Slurm) ------------------------
name=moerun-test-bad-$$
read -r -a extra <<<"$EXTRA_ARGS"
if ! out=$(cd "$tmp" && timeout 120 "$MOERUN" train --config "$CONFIG" --data "$DATA" --steps 2 \
    "${extra[@]}" --out "runs/$name" --ckpt-dir "checkpoints/$name" 2>&1); then
  echo "FAIL: the 2-step run that makes the checkpoint failed"; sed 's/^/    /' <<<"$out"; exit 1
fi
snapshot() { (cd "$tmp" && find "checkpoints/$name" "runs/$name" -printf '%p %s\n' -type f -exec sha256sum {} + | sort); }
before=$(snapshot)
[[ $(cat "$tmp/checkpoints/$name/latest" 2>/dev/null) == 2 ]] || { echo "FAIL: no committed step 2"; exit 1; }

# ---- the bad submissions: CASE -> sbatch arguments, expected exit code, expected log line ------
: >"$tmp/afile"
mkdir -p "$tmp/nobin"
nobin_path=/usr/bin:/bin
command -v moerun >/dev/null && nobin_path=/nonexistent # keep an installed moerun out of reach
declare -A jobs want_exit want_msg dir
add_case() { # CASE EXIT MESSAGE SUBMIT_DIR ENV_PREFIX... -- SBATCH_ARGS...
  local c=$1 e=$2 msg=$3 d=$4 envp=() j
  shift 4
  while [[ $1 != -- ]]; do envp+=("$1"); shift; done
  shift
  j=$(cd "$d" && env "${envp[@]}" sbatch --parsable -J "$name" -N 2 --ntasks-per-node=2 --time=5 \
    "$@" "$SRC/slurm/train.sbatch" 2>&1) || { echo "FAIL: $c: sbatch refused: $j"; fail=1; return; }
  SLURM_JOBS+=("$j")
  jobs[$c]=$j want_exit[$c]=$e want_msg[$c]=$msg dir[$c]=$d
}
add_case moerun-unset 2 "MOERUN is not set" "$tmp/nobin" -u MOERUN PATH="$nobin_path" -- \
  --export=ALL,STEPS=4
add_case config-empty 2 "CONFIG is empty" "$tmp" -- --export=ALL,STEPS=4,CONFIG=
add_case ckpt-unwritable 2 "CKPT_DIR=$tmp/afile/ckpt cannot be created" "$tmp" -- \
  --export=ALL,STEPS=4,CKPT_DIR="$tmp/afile/ckpt"
add_case ep-world 2 "EP_SIZE=3 must divide the ranks (2 nodes x 2 = 4)" "$tmp" -- \
  --export=ALL,STEPS=4,EP_SIZE=3
add_case ep-experts 1 "--experts (6) must be divisible by --ep-size (4)" "$tmp" -- \
  "--export=ALL,STEPS=4,EP_SIZE=4,EXTRA_ARGS=$EXTRA_ARGS --experts 6"

for c in "${!jobs[@]}"; do
  j=${jobs[$c]}
  st=$(wait_done "$j" 180)
  log=${dir[$c]}/$name-$j.out
  ec=$(job_field "$j" ExitCode)
  bad=0
  [[ $st == FAILED && $ec == "${want_exit[$c]}:0" ]] ||
    { echo "FAIL: $c: job $j ended $st, exit $ec; expected FAILED, exit ${want_exit[$c]}:0"; bad=1; }
  grep -qF -- "${want_msg[$c]}" "$log" || { echo "FAIL: $c: the log lacks '${want_msg[$c]}'"; bad=1; }
  grep -q 'step [0-9]*/' "$log" && { echo "FAIL: $c: the job trained"; bad=1; }
  if ((bad)); then show_log "$log"; fail=1
  else echo "ok:   $c: FAILED with exit ${want_exit[$c]}: $(grep -m1 -F -- "${want_msg[$c]}" "$log")"; fi
done

after=$(snapshot)
if [[ $before != "$after" ]]; then
  echo "FAIL: the checkpoint or run directory changed:"; diff <(echo "$before") <(echo "$after") | sed 's/^/    /'
  fail=1
fi
((fail)) && exit 1
echo "ok:   nothing lost: checkpoints/$name and runs/$name byte-identical ($((SECONDS - t0)) s)"
