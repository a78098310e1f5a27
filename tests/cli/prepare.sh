#!/usr/bin/env bash
# `moerun prepare` end to end on small temporary inputs: a dataset of two text domains plus
# generated arithmetic (on 1 and 2 ranks), its HDF5 layout, --force, and bad command lines that
# must exit 1 with one message naming the problem, without hanging or aborting the MPI world.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Inputs: "prose" from .txt files (one empty, one hidden, one .md to be filtered out), "code"
# from a single file named directly.
mkdir -p "$tmp/prose/sub" "$tmp/prose/.hidden" "$tmp/out"
for i in 1 2 3 4 5 6; do printf 'Line %d of a small prose document.\nAnother line.\n' "$i" >"$tmp/prose/doc$i.txt"; done
printf 'Deeper text.\n' >"$tmp/prose/sub/deep.txt"
: >"$tmp/prose/empty.txt"
printf 'never read\n' >"$tmp/prose/.hidden/secret.txt"
printf 'not a txt\n' >"$tmp/prose/notes.md"
printf 'def add(a, b):\n    return a + b\n' >"$tmp/code.py"

mpirun_n() {  # ranks args...: moerun under mpiexec, bounded
  local n=$1; shift
  timeout 120 mpiexec -n "$n" --oversubscribe "$MOERUN" "$@"
}

# ---- success: 1 rank, then 2 ranks ------------------------------------------------------------
check_dataset() {  # file label
  local file=$1 label=$2 listing before=$fail
  if [[ ! -s $file ]]; then echo "FAIL: $label: $file was not written"; fail=1; return; fi
  if [[ -e $file.tmp ]]; then echo "FAIL: $label: $file.tmp left behind"; fail=1; fi
  listing=$(h5ls -r "$file" 2>&1) || { echo "FAIL: $label: h5ls $file: $listing"; fail=1; return; }
  local split name
  for split in train validation; do
    for name in tokens doc_offsets doc_domain; do
      if ! grep -qE "^/$split/$name +Dataset" <<<"$listing"; then
        echo "FAIL: $label: $file lacks /$split/$name"; echo "$listing" | sed 's/^/    /'; fail=1
      fi
    done
  done
  # Fixed-length strings: short names are padded with NULs, shown as "prose\000\000...".
  local attrs
  attrs=$(h5dump -a /domains -a /format "$file" 2>&1)
  for name in prose code arithmetic moerun-tokens; do
    grep -qE "\"$name(\\\\000)*\"" <<<"$attrs" || { echo "FAIL: $label: attributes lack \"$name\""; echo "$attrs" | sed 's/^/    /'; fail=1; }
  done
  [[ $fail -ne $before ]] || echo "ok:   $label -> $file"
}

args=(--input "prose=$tmp/prose" --input "code=$tmp/code.py" --extensions "txt,py"
      --arithmetic-docs 40 --seed 3 --validation-fraction 0.2)
out=$(timeout 120 "$MOERUN" prepare "${args[@]}" --output "$tmp/out/one.h5" --quiet 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: prepare on 1 rank -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else
  check_dataset "$tmp/out/one.h5" "prepare on 1 rank"
  # The summary: prose has 7 documents (6 + sub/deep.txt) and 1 empty file; code 1; arithmetic 40.
  prose=$(grep -E '^prose ' <<<"$out") || { echo "FAIL: summary lacks a prose row"; echo "$out"; fail=1; }
  read -r _ ptd _ pvd _ pempty <<<"$prose"
  [[ $((ptd + pvd)) -eq 7 && $pempty -eq 1 ]] || { echo "FAIL: prose row '$prose': expected 7 docs, 1 empty"; fail=1; }
  arith=$(grep -E '^arithmetic ' <<<"$out")
  read -r _ atd _ avd _ _ <<<"$arith"
  [[ $((atd + avd)) -eq 40 ]] || { echo "FAIL: arithmetic row '$arith': expected 40 docs"; fail=1; }
  grep -qE '^total ' <<<"$out" || { echo "FAIL: summary lacks a total row"; echo "$out"; fail=1; }
fi

out=$(mpirun_n 2 prepare "${args[@]}" --output "$tmp/out/two.h5" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: prepare on 2 ranks -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else
  check_dataset "$tmp/out/two.h5" "prepare on 2 ranks"
  n=$(grep -c '^wrote ' <<<"$out")
  [[ $n -eq 1 ]] || { echo "FAIL: prepare on 2 ranks printed the summary $n times"; echo "$out"; fail=1; }
  # Same inputs and seed on 1 and 2 ranks: the same dataset.
  if [[ -s $tmp/out/one.h5 ]] && ! h5diff "$tmp/out/one.h5" "$tmp/out/two.h5" >/dev/null 2>&1; then
    echo "FAIL: the 1-rank and 2-rank datasets differ"; fail=1
  fi
fi

# --force overwrites an existing output.
out=$(timeout 120 "$MOERUN" prepare --arithmetic-docs 5 --output "$tmp/out/one.h5" --force --quiet 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! h5dump -a /domains "$tmp/out/one.h5" 2>/dev/null | grep -qF '"arithmetic"' \
   || h5dump -a /domains "$tmp/out/one.h5" 2>/dev/null | grep -qF '"prose'; then
  echo "FAIL: --force did not replace the output (exit $rc)"; echo "$out" | sed 's/^/    /'; fail=1
else
  echo "ok:   --force replaced the output"
fi

# ---- errors: exit 1, one message naming the problem, no MPI abort ------------------------------
err_case() {  # ranks expected_substring args...
  local n=$1 want=$2; shift 2
  local out rc
  if [[ $n -eq 1 ]]; then out=$(timeout 120 "$MOERUN" "$@" 2>&1); rc=$?
  else out=$(mpirun_n "$n" "$@" 2>&1); rc=$?; fi
  if [[ $rc -ne 1 ]]; then
    echo "FAIL: [$n rank(s)] moerun $* -> exit $rc, expected 1"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: [$n rank(s)] moerun $* -> message lacks '$want'"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if grep -q "MPI_ABORT" <<<"$out"; then
    echo "FAIL: [$n rank(s)] moerun $* aborted the MPI world for a config error"; fail=1; return
  fi
  local c; c=$(grep -c "error" <<<"$out")
  if [[ $c -ne 1 ]]; then echo "FAIL: [$n rank(s)] moerun $* printed $c error lines, expected 1"; echo "$out"; fail=1; return; fi
  echo "ok:   [$n rank(s)] moerun $* -> exit 1: $(grep error <<<"$out")"
}
p="prose=$tmp/prose"
for n in 1 2; do
  err_case "$n" "--output is required" prepare --input "$p"
  err_case "$n" "$tmp/nonexistent" prepare --input "prose=$tmp/nonexistent" --output "$tmp/out/x.h5"
  err_case "$n" "--validation-fraction" prepare --input "$p" --validation-fraction 1.5 --output "$tmp/out/x.h5"
  err_case "$n" "$tmp/out/two.h5' already exists" prepare --input "$p" --output "$tmp/out/two.h5"
  err_case "$n" "--input 'prose' must have the form DOMAIN=PATH" prepare --input prose --output "$tmp/out/x.h5"
  err_case "$n" "nothing to prepare" prepare --output "$tmp/out/x.h5"
  err_case "$n" "does not exist" prepare --input "$p" --output "$tmp/no/such/dir/x.h5"
  err_case "$n" "has no non-empty files" prepare --input "$p" --extensions rst --output "$tmp/out/x.h5"
  err_case "$n" "--arithmetic-docs" prepare --arithmetic-docs abc --output "$tmp/out/x.h5"
  # A write that fails on rank 0 (not a config error): every rank still exits cleanly.
  err_case "$n" "cannot create token dataset '/proc/moerun-x.h5.tmp': No such file or directory" \
    prepare --input "$p" --output /proc/moerun-x.h5
done
[[ ! -e $tmp/out/x.h5 && ! -e $tmp/out/x.h5.tmp ]] || { echo "FAIL: a failed prepare left $tmp/out/x.h5*"; fail=1; }

# --help prints once on 2 ranks.
out=$(mpirun_n 2 prepare --help 2>&1) || { echo "FAIL: prepare --help exit $?"; fail=1; }
[[ $(grep -c -- "--validation-fraction" <<<"$out") -eq 1 ]] || { echo "FAIL: --help should list --validation-fraction once"; echo "$out"; fail=1; }

[[ $fail -eq 0 ]] && echo "all prepare CLI checks passed"
exit $fail
