#!/usr/bin/env bash
# Bad command lines on 2 ranks: exit status 1 (2 for usage), one clear message naming the
# option, no hang (each run is bounded by `timeout`), no MPI abort noise.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
fail=0
run_case() {  # expected_rc  expected_substring  args...
  local want_rc=$1 want=$2; shift 2
  local out rc
  out=$(timeout 120 mpiexec -n 2 --oversubscribe "$MOERUN" "$@" 2>&1); rc=$?
  if [[ $rc -ne $want_rc ]]; then
    echo "FAIL: moerun $* -> exit $rc, expected $want_rc"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: moerun $* -> message lacks '$want'"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if grep -q "MPI_ABORT" <<<"$out"; then
    echo "FAIL: moerun $* aborted the MPI world for a config error"; fail=1; return
  fi
  [[ $want_rc -eq 1 ]] || { echo "ok:   moerun $* -> exit $rc"; return; }
  local n; n=$(grep -c "error" <<<"$out")
  if [[ $n -ne 1 ]]; then echo "FAIL: moerun $* printed $n error lines, expected 1"; echo "$out"; fail=1; return; fi
  echo "ok:   moerun $* -> exit $rc: $(grep error <<<"$out")"
}
run_case 2 "unknown job 'nosuchjob'" nosuchjob
run_case 1 "--experts" bench moe-layer --experts 7 --ep-size 2 --iters 1
run_case 1 "--top-k" bench moe-layer --top-k 0 --iters 1
run_case 1 "--score-fn" bench moe-layer --score-fn relu --iters 1
run_case 1 "--balance aux" bench moe-layer --balance aux --iters 1
run_case 1 "unrecognised option '--no-such-option'" bench moe-layer --no-such-option
run_case 1 "--tokens" bench moe-layer --tokens abc
# --help works on 2 ranks and prints once.
out=$(timeout 120 mpiexec -n 2 --oversubscribe "$MOERUN" bench moe-layer --help 2>&1) || { echo "FAIL: --help exit $?"; fail=1; }
[[ $(grep -c -- "--experts" <<<"$out") -eq 1 ]] || { echo "FAIL: --help should list --experts once"; echo "$out"; fail=1; }
exit $fail
