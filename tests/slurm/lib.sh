# Sourced by tests/slurm/*.sh (not a test itself): the Slurm test cluster check, job submission
# and polling. The tests run real jobs on the cluster of slurm/local-cluster.sh (tests/run.sh
# brings it up); they skip (exit 77) when Slurm is not installed or, outside tests/run.sh, not up.
# Expects MOERUN and SRC set by the test.

SLURM_JOBS=() # ids submitted by this test: cancelled at exit if still queued or running

# The exit status when Slurm is installed but no (large enough) cluster answers: 77 (skip) for a
# developer's `ctest`, 1 (fail) under tests/run.sh, which brings the cluster up itself and sets
# MOERUN_REQUIRE_SLURM=1, so that CI can never pass with the Slurm tests silently skipped.
slurm_unavailable() {
  if [[ ${MOERUN_REQUIRE_SLURM:-0} == 1 ]]; then
    echo "FAIL: tests/run.sh brought the Slurm cluster up, but: $*"
    exit 1
  fi
  echo "SKIP: $*"
  exit 77
}

# slurm_require NODES CPUS_PER_NODE: skip the test unless a cluster with that much is up.
slurm_require() {
  local need_nodes=$1 need_cpus=$2 b usable
  for b in sbatch scontrol squeue sinfo scancel; do
    command -v "$b" >/dev/null || { echo "SKIP: Slurm is not installed ($b not found; jobs/setup.sh installs it)"; exit 77; }
  done
  if ! timeout 10 scontrol ping 2>/dev/null | grep -q UP; then
    slurm_unavailable "no Slurm controller answers (start one: slurm/local-cluster.sh up)"
  fi
  usable=$(sinfo -h -N -o '%N %t %c' 2>/dev/null |
    awk -v c="$need_cpus" '$2 ~ /^(idle|mix|alloc|comp)$/ && $3 >= c {print $1}' | sort -u | wc -l)
  if ((usable < need_nodes)); then
    sinfo -N 2>&1 | sed 's/^/    /'
    slurm_unavailable "the Slurm cluster has $usable usable node(s) with >= $need_cpus CPUs, need" \
      "$need_nodes (slurm/local-cluster.sh up --nodes 4 --cpus 4)"
  fi
}

slurm_cleanup() {
  local j
  for j in "${SLURM_JOBS[@]}"; do scancel "$j" 2>/dev/null || true; done
}

# submit DIR ARGS...: sbatch from DIR (the job's submit and working directory); prints the job id.
submit() {
  local dir=$1 out
  shift
  out=$(cd "$dir" && sbatch --parsable "$@" 2>&1) || { echo "FAIL: sbatch $* -> $out" >&2; return 1; }
  out=${out%%;*}
  SLURM_JOBS+=("$out")
  echo "$out"
}

job_field() { # JOB FIELD: one field of `scontrol show job` (empty when the job is gone)
  scontrol show job "$1" 2>/dev/null | grep -oP "(^|\\s)$2=\\K\\S+" | head -1
}

# wait_done JOB SECONDS: wait until the job ended (any final state), releasing it at once whenever
# it was requeued: on a one-host cluster a requeued job waits ~2 min with Reason=BeginTime.
# Prints the final state; returns 1 on a timeout.
wait_done() {
  local job=$1 limit=$2 t0=$SECONDS st reason
  while ((SECONDS - t0 < limit)); do
    st=$(job_field "$job" JobState)
    case $st in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | BOOT_FAIL | DEADLINE)
        echo "$st"; return 0 ;;
      PENDING)
        reason=$(job_field "$job" Reason)
        [[ $reason == BeginTime ]] && scontrol update JobId="$job" StartTime=now 2>/dev/null
        ;;
    esac
    sleep 0.5
  done
  echo "TIMEOUT_WAITING($st)"
  return 1
}

# wait_for COND_CMD SECONDS: poll a command until it succeeds; returns 1 on a timeout.
wait_for() {
  local limit=$2 t0=$SECONDS
  while ((SECONDS - t0 < limit)); do
    eval "$1" && return 0
    sleep 0.5
  done
  return 1
}

# train_lines METRICS: the number of "train" lines; last_field METRICS TYPE FIELD: the exact text
# of FIELD in the last line of TYPE (numbers as written, for bitwise comparisons; every occurrence,
# e.g. the per-domain val_loss and the total).
train_lines() { cat -- "$1" 2>/dev/null | grep -c '"type":"train"'; }
last_field() {
  grep "\"type\":\"$2\"" "$1" 2>/dev/null | tail -1 | grep -oP "\"$3\":\\K[-+0-9.eE]+" | paste -sd' ' -
}

# show_log FILE: the job log, indented, for a failure message.
show_log() { sed 's/^/    /' "$1" 2>/dev/null || echo "    (no log $1)"; }

# slurm_setup: a temporary directory ($tmp, removed at exit with this test's jobs cancelled), the
# small generated dataset of the CLI tests ($tmp/d.h5), and the template's settings every test
# shares, exported so that sbatch (--export=ALL, its default) hands them to the job.
slurm_setup() {
  tmp=$(mktemp -d /tmp/moerun-slurm-test.XXXXXX)
  trap 'slurm_cleanup; rm -rf "$tmp"' EXIT
  source "$SRC/tests/common/cli_data.sh"
  write_prose "$tmp/text" 6 7
  make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200
  export MOERUN CONFIG="$SRC/jobs/presets/tiny.ini" DATA="$tmp/d.h5"
  # 4 ranks of 4 sequences; one BLAS thread per rank, as results are bitwise reproducible only at
  # the same thread count; every step in the metrics
  export EXTRA_ARGS="--warmup-steps 2 --micro-batch 4 --threads 1 --eval-every 0 --log-every 1"
  unset STEPS EP_SIZE NODES TASKS_PER_NODE CKPT_ROOT RUNS_ROOT RUN_NAME CKPT_DIR RUN_DIR SAVE_EVERY \
    MAX_REQUEUES EXIT_BEFORE_LIMIT TEMPLATE
}
