#!/usr/bin/env bash
# A scaling study of `moerun train`: a weak-scaling sweep (tokens per rank fixed: the global batch
# grows with the ranks) and a strong-scaling sweep (the global batch fixed) over node counts, ranks
# per node and EP sizes; every point is one short run into RESULTS_DIR/<point>/, then
# `moerun scale collect RESULTS_DIR` writes RESULTS_DIR/scaling.csv and the PNG plots.
#
# Usage: slurm/scaling-study.sh [options] RESULTS_DIR [-- extra `moerun train` options]
#   --launcher L        slurm (default): one sbatch job per point, each waiting for the one before
#                       (afterany: the points never share the CPUs), and an afterany job that
#                       collects; mpirun: the points one after another on this machine, then collect
#   --nodes LIST        node counts, e.g. 1,2,4 (default 1,2; mpirun: 1, the only value it takes)
#   --ranks-per-node L  ranks per node, e.g. 1,2 (default 1,2)
#   --ep LIST           EP sizes, e.g. 1,2 or auto,2 (default auto: EP = all ranks of the point,
#                       the series "ep=all"); a size that does not divide the point's ranks (or
#                       the experts) skips the point
#   --kinds LIST        weak,strong (default both)
#   --batch-per-rank B  weak: sequences per rank per step (default 2)
#   --global-batch G    strong: sequences per step (default 8; a point whose ranks do not divide
#                       it is skipped)
#   --steps N           optimizer steps per run (default 8); --warmup N steps left out by collect
#                       (default 2)
#   --config INI        model preset (default jobs/presets/tiny.ini); --data PATH token dataset
#                       (default data/default.h5); --moerun PATH (default build/moerun)
#   --threads T         BLAS threads per rank (default 1: a small machine runs many ranks)
#   --btl LIST          Open MPI byte transfer layers (default self,vader,tcp, with the ob1 PML
#                       that uses them; see below); `default` leaves Open MPI's own choice (UCX,
#                       InfiniBand on a real cluster)
#   --time MIN          Slurm time limit per point (default 10); --partition P; --wait: wait for
#                       the collect job and print its output (slurm)
#   --dry-run           print the plan (points, commands) and submit / run nothing
#   -h, --help          this help
# Inter-node traffic: fake Slurm nodes on one host share memory, but Open MPI only uses its
# shared-memory BTL (vader) between ranks it knows to be on the same node, and under srun
# --mpi=pmix each fake node is a node of its own. So OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
# (the default here) sends within a node through vader and between nodes through TCP (the host's
# own interface, through the kernel's network stack), as on a cluster. Checked on the local
# cluster (2 nodes x 2 ranks, OMPI_MCA_btl_base_verbose=100): TCP connections only between ranks
# of different nodes; with OMPI_MCA_btl=self,vader the 2-node run fails ("unable to reach each
# other ... BTLs attempted: self"). Under --launcher mpirun all ranks are on one node: vader only.
# Each fake node needs its own vader backing directory (/dev/shm/ompi-$SLURMD_NODENAME; the job
# script sets it), else the segments of two nodes collide. More ranks than cores:
# OMPI_MCA_mpi_yield_when_idle=1 so that waiting ranks give the cores away.
# Each point directory holds study.ini (kind, series, point) for `moerun scale collect`, the
# run's metrics.jsonl + config.ini, and its log (train.log, or slurm-<job>.out + job.sbatch).
set -euo pipefail
prog=scaling-study.sh
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "$prog: error: $*" >&2; exit 1; }
bad_usage() { echo "$prog: error: $*" >&2; echo "(see $prog --help)" >&2; exit 2; }

launcher=slurm nodes="" rpn=1,2 ep=auto kinds=weak,strong batch_per_rank=2 global_batch=8
steps=8 warmup=2 config=$repo/jobs/presets/tiny.ini data=$repo/data/default.h5
moerun=$repo/build/moerun threads=1 btl=self,vader,tcp time_min=10 partition="" wait=0 dry=0
results="" extra=()
need() { [[ $# -ge 2 && -n $2 ]] || bad_usage "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --launcher) need "$@"; launcher=$2; shift 2 ;;
    --nodes) need "$@"; nodes=$2; shift 2 ;;
    --ranks-per-node) need "$@"; rpn=$2; shift 2 ;;
    --ep) need "$@"; ep=$2; shift 2 ;;
    --kinds) need "$@"; kinds=$2; shift 2 ;;
    --batch-per-rank) need "$@"; batch_per_rank=$2; shift 2 ;;
    --global-batch) need "$@"; global_batch=$2; shift 2 ;;
    --steps) need "$@"; steps=$2; shift 2 ;;
    --warmup) need "$@"; warmup=$2; shift 2 ;;
    --config) need "$@"; config=$2; shift 2 ;;
    --data) need "$@"; data=$2; shift 2 ;;
    --moerun) need "$@"; moerun=$2; shift 2 ;;
    --threads) need "$@"; threads=$2; shift 2 ;;
    --btl) need "$@"; btl=$2; shift 2 ;;
    --time) need "$@"; time_min=$2; shift 2 ;;
    --partition) need "$@"; partition=$2; shift 2 ;;
    --wait) wait=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) bad_usage "unknown option '$1'" ;;
    *) [[ -z $results ]] || bad_usage "more than one RESULTS_DIR ('$results', '$1')"
       results=$1; shift ;;
  esac
done

# ---- validate --------------------------------------------------------------------------------
[[ -n $results ]] || bad_usage "missing RESULTS_DIR"
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || bad_usage "$1 must be a positive integer (got '$2')"; }
list() {  # NAME VALUE -> the positive integers of a comma list, one per line
  local x
  [[ -n $2 ]] || bad_usage "$1 is empty"
  IFS=, read -ra xs <<<"$2"
  for x in "${xs[@]}"; do posint "$1" "$x"; echo "$x"; done
}
[[ $btl == default || $btl =~ ^\^?[a-z0-9_]+(,[a-z0-9_]+)*$ ]] || bad_usage "--btl takes a comma list of BTL names or default (got '$btl')"
if [[ -z $nodes ]]; then [[ $launcher == mpirun ]] && nodes=1 || nodes=1,2; fi
case $launcher in slurm|mpirun) ;; *) bad_usage "--launcher must be slurm or mpirun (got '$launcher')" ;; esac
mapfile -t node_list < <(list --nodes "$nodes")
mapfile -t rpn_list < <(list --ranks-per-node "$rpn")
ep_list=()
IFS=, read -ra eps <<<"$ep"
[[ ${#eps[@]} -gt 0 ]] || bad_usage "--ep is empty"
for e in "${eps[@]}"; do
  [[ $e == auto ]] || posint --ep "$e"
  ep_list+=("$e")
done
IFS=, read -ra kind_list <<<"$kinds"
[[ ${#kind_list[@]} -gt 0 ]] || bad_usage "--kinds is empty"
for k in "${kind_list[@]}"; do
  [[ $k == weak || $k == strong ]] || bad_usage "--kinds takes weak and/or strong (got '$k')"
done
for o in "--batch-per-rank:$batch_per_rank" "--global-batch:$global_batch" "--steps:$steps" \
         "--threads:$threads" "--time:$time_min"; do posint "${o%%:*}" "${o#*:}"; done
[[ $warmup =~ ^[0-9]+$ ]] || bad_usage "--warmup must be an integer >= 0 (got '$warmup')"
(( warmup < steps )) || bad_usage "--warmup $warmup leaves no step of --steps $steps"
if [[ $launcher == mpirun ]]; then
  for n in "${node_list[@]}"; do
    [[ $n == 1 ]] || bad_usage "--launcher mpirun runs on this one machine: --nodes must be 1 (got '$nodes'); several nodes need --launcher slurm"
  done
fi
[[ -f $config ]] || die "--config $config: no such file"
experts=$(sed -n 's/^[[:space:]]*experts[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$config" | tail -1)
experts=${experts:-16}
if [[ $dry == 0 ]]; then
  [[ -x $moerun ]] || die "--moerun $moerun is not an executable (build first: cmake --build build)"
  [[ -e $data || -e $data.idx ]] || die "--data $data: no such dataset (jobs/make_default_dataset.sh makes data/default.h5)"
  if [[ $launcher == slurm ]]; then
    command -v sbatch >/dev/null || die "sbatch not found: use --launcher mpirun on a workstation"
    sinfo -h >/dev/null 2>&1 || die "no Slurm controller answers (sinfo failed); is the cluster up? (slurm/local-cluster.sh status)"
  else
    command -v mpirun >/dev/null || die "mpirun not found"
  fi
  if [[ -d $results ]] && compgen -G "$results/*/study.ini" >/dev/null; then
    die "RESULTS_DIR $results already holds a study: pick a new directory"
  fi
fi
abs() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }
results=$(abs "$results") config=$(abs "$config") data=$(abs "$data") moerun=$(abs "$moerun")

# ---- the plan --------------------------------------------------------------------------------
# One point: kind ep_label ep_size nodes rpn ranks global_batch micro_batch name
points=() skipped=()
for kind in "${kind_list[@]}"; do
  for e in "${ep_list[@]}"; do
    for n in "${node_list[@]}"; do
      for r in "${rpn_list[@]}"; do
        ranks=$((n * r))
        if [[ $e == auto ]]; then label=all size=$ranks; else label=$e size=$e; fi
        name=$kind-ep$label-n${n}x$r
        if (( ranks % size != 0 )); then skipped+=("$name: EP $size does not divide $ranks ranks"); continue; fi
        if (( experts % size != 0 )); then skipped+=("$name: EP $size does not divide $experts experts"); continue; fi
        if [[ $kind == weak ]]; then gb=$((batch_per_rank * ranks)) mb=$batch_per_rank
        else
          if (( global_batch % ranks != 0 )); then skipped+=("$name: $ranks ranks do not divide --global-batch $global_batch"); continue; fi
          gb=$global_batch mb=$((global_batch / ranks))
        fi
        points+=("$kind $label $size $n $r $ranks $gb $mb $name")
      done
    done
  done
done
[[ ${#points[@]} -gt 0 ]] || die "no point left to run (${skipped[*]:-})"

# Open MPI: vader inside a node, TCP between nodes; yield when idle (more ranks than cores).
mpi_env="OMPI_MCA_mpi_yield_when_idle=1 OPENBLAS_NUM_THREADS=$threads"
[[ $btl == default ]] || mpi_env+=" OMPI_MCA_pml=ob1 OMPI_MCA_btl=$btl"
# shellcheck disable=SC2163,SC2086
export $mpi_env
train_args() {  # global_batch micro_batch ep_size out_dir -> the moerun train arguments
  local wu=$((steps < 2 ? steps : 2))
  printf '%s\n' train --config "$config" --data "$data" --steps "$steps" --warmup-steps "$wu" \
    --global-batch "$1" --micro-batch "$2" --ep-size "$3" --threads "$threads" \
    --eval-every 0 --eval-batches 1 --log-every "$steps" --loads-every 0 --keep-last 1 \
    --out "$4" "${extra[@]}"
}
q() { printf '%q ' "$@"; }

echo "$prog: ${#points[@]} point(s) ($launcher, $mpi_env, $steps steps, collect after $warmup) -> $results"
for s in "${skipped[@]}"; do echo "  skip  $s"; done
for p in "${points[@]}"; do
  read -r kind label size n r ranks gb mb name <<<"$p"
  echo "  point $name: $kind, $n node(s) x $r rank(s) = $ranks, EP $size, global batch $gb (micro $mb)"
done
if [[ $dry == 1 ]]; then
  read -r kind label size n r ranks gb mb name <<<"${points[0]}"
  mapfile -t args < <(train_args "$gb" "$mb" "$size" "$results/$name")
  if [[ $launcher == slurm ]]; then
    echo "each point: sbatch -N <nodes> --ntasks-per-node <rpn> --cpus-per-task $threads --dependency afterany:<previous point> $results/<point>/job.sbatch"
    echo "  job.sbatch: srun --mpi=pmix --kill-on-bad-exit=1 (per-node vader directory) $(q "$moerun" "${args[@]}")"
    echo "then: sbatch --dependency afterany:<all points> --wrap '$(q "$moerun" scale collect "$results" --warmup "$warmup")'"
  else
    echo "each point: mpirun -n <ranks> --oversubscribe $(q "$moerun" "${args[@]}") > $results/<point>/train.log"
    echo "then: $(q "$moerun" scale collect "$results" --warmup "$warmup")"
  fi
  echo "(dry run: nothing submitted)"
  exit 0
fi

mkdir -p "$results" || die "cannot create $results"
write_study_ini() {  # dir kind label name nodes rpn
  mkdir -p "$1"
  printf '# written by slurm/scaling-study.sh; read by moerun scale collect\nkind = %s\nseries = ep=%s\npoint = %s\nnodes = %s\nranks_per_node = %s\n' \
    "$2" "$3" "$4" "$5" "$6" >"$1/study.ini"
}

if [[ $launcher == mpirun ]]; then
  [[ $(id -u) -ne 0 ]] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  failed=0
  for p in "${points[@]}"; do
    read -r kind label size n r ranks gb mb name <<<"$p"
    dir=$results/$name
    write_study_ini "$dir" "$kind" "$label" "$name" "$n" "$r"
    mapfile -t args < <(train_args "$gb" "$mb" "$size" "$dir")
    t0=$SECONDS
    if mpirun -n "$ranks" --oversubscribe "$moerun" "${args[@]}" >"$dir/train.log" 2>&1; then
      echo "$prog: $name done in $((SECONDS - t0)) s"
    else
      echo "$prog: WARNING: $name failed (exit $?; see $dir/train.log)" >&2; failed=$((failed + 1))
    fi
    rm -rf "$dir/ckpt"  # the study needs the metrics only
  done
  (( failed == 0 )) || echo "$prog: $failed point(s) failed; collecting the rest" >&2
  exec "$moerun" scale collect "$results" --warmup "$warmup"
fi

# ---- Slurm: one job per point, chained with afterany, then the collect job -------------------
opt_partition=()
[[ -z $partition ]] || opt_partition=(--partition "$partition")
prev="" ids=()
for p in "${points[@]}"; do
  read -r kind label size n r ranks gb mb name <<<"$p"
  dir=$results/$name
  write_study_ini "$dir" "$kind" "$label" "$name" "$n" "$r"
  mapfile -t args < <(train_args "$gb" "$mb" "$size" "$dir")
  cat >"$dir/job.sbatch" <<EOF
#!/bin/bash
# One point of a scaling study (written by slurm/scaling-study.sh).
set -uo pipefail
export $mpi_env
echo "scaling point $name: job \$SLURM_JOB_ID on \$SLURM_JOB_NODELIST (\$SLURM_NTASKS tasks), $mpi_env"
echo "load average at start: \$(cut -d' ' -f1-3 /proc/loadavg)"
# Fake nodes on one host: each node its own vader backing directory (else the segments collide).
srun --mpi=pmix --kill-on-bad-exit=1 bash -c 'd=/dev/shm/ompi-\${SLURMD_NODENAME:-local}; mkdir -p "\$d"; export OMPI_MCA_btl_vader_backing_directory=\$d; exec "\$@"' moerun-rank $(q "$moerun" "${args[@]}")
rc=\$?
rm -rf $(q "$dir/ckpt")
exit \$rc
EOF
  dep=()
  [[ -z $prev ]] || dep=(--dependency "afterany:$prev")
  prev=$(sbatch --parsable -J "scale-$name" -N "$n" --ntasks-per-node "$r" --cpus-per-task "$threads" \
    -t "$time_min" -o "$dir/slurm-%j.out" "${opt_partition[@]}" "${dep[@]}" "$dir/job.sbatch") \
    || die "sbatch of point $name failed"
  prev=${prev%%;*}
  ids+=("$prev")
  echo "  submitted $name: job $prev"
done
deps=$(IFS=:; echo "${ids[*]}")
collect_id=$(sbatch --parsable -J scale-collect -N 1 -n 1 -t 10 -o "$results/collect-%j.out" \
  "${opt_partition[@]}" --dependency "afterany:$deps" \
  --wrap "$(q "$moerun" scale collect "$results" --warmup "$warmup")") || die "sbatch of the collect job failed"
collect_id=${collect_id%%;*}
echo "  submitted collect: job $collect_id (afterany:$deps) -> $results/collect-$collect_id.out"
if [[ $wait == 1 ]]; then
  while [[ -n $(squeue -h -j "$collect_id" -o %T 2>/dev/null) ]]; do sleep 2; done
  cat "$results/collect-$collect_id.out"
  grep -q "scaling.csv" "$results/collect-$collect_id.out" || die "the collect job wrote no CSV"
fi
