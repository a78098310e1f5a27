#!/usr/bin/env bash
# tests/run.sh - install packages, build, and run every moerun test (Debian 12, as root).
#
# Usage: tests/run.sh [--sanitize] [--no-format] [-- CTEST_ARGS...]
#   --sanitize   build a second tree (build-asan/) with ASan + UBSan and run the suite there
#   --no-format  skip the clang-format check
#   CTEST_ARGS   passed to ctest, e.g. -- -R mpi_n2
# The closing line is ctest's summary ("100% tests passed, 0 tests failed out of N").
# When Slurm is installed, the tests' Slurm cluster (slurm/local-cluster.sh, 4 fake nodes) is
# brought up first if it is not up, and taken down at the end if this script started it; without
# Slurm the tests labelled `slurm` skip. The HF interop venv (jobs/setup.sh --hf-venv) is created
# when missing; without it (no network) the tests labelled `hf` skip.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANITIZE=0
FORMAT=1
CTEST_ARGS=()
while (($#)); do
  case $1 in
    --sanitize) SANITIZE=1 ;;
    --no-format) FORMAT=0 ;;
    -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; CTEST_ARGS=("$@"); break ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((FORMAT)); then
  # Formatting is checked before the (long) build so that a style slip fails in seconds.
  "$ROOT/jobs/setup.sh" --no-build
  "$ROOT/tests/check_format.sh"
fi

"$ROOT/jobs/setup.sh" --no-build --hf-venv

if ((SANITIZE)); then
  BUILD_DIR="$ROOT/build-asan"
  "$ROOT/jobs/setup.sh" --build-dir "$BUILD_DIR" --sanitize --werror
else
  BUILD_DIR="$ROOT/build"
  "$ROOT/jobs/setup.sh" --build-dir "$BUILD_DIR" --werror
fi

# The Slurm tests' cluster: used as it is when one is up (whatever its size: the tests fail when
# it is too small), else started here and stopped at exit, silently, so that ctest's summary
# stays the closing line.
CLUSTER="$ROOT/slurm/local-cluster.sh"
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
  export MOERUN_REQUIRE_SLURM=1  # Slurm is here: a cluster that is not up fails the tests
  if "$CLUSTER" status >/dev/null 2>&1; then
    echo "run.sh: using the Slurm cluster that is up (slurm/local-cluster.sh status)"
  elif up=$("$CLUSTER" up --nodes 4 --cpus 4); then
    echo "$up"
    # "already up": it was running (a node was only drained), so it is not ours to stop
    [[ $up == *"already up"* ]] || trap '"$CLUSTER" down >/dev/null 2>&1 || true' EXIT
  else
    echo "run.sh: the Slurm cluster did not come up; the slurm tests will fail" >&2
  fi
else
  echo "run.sh: Slurm is not installed (jobs/setup.sh installs it); the slurm tests will skip"
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
cd "$BUILD_DIR"
rc=0
ctest --output-on-failure --timeout 900 -j "${MOERUN_TEST_JOBS:-2}" "${CTEST_ARGS[@]}" || rc=$?
exit "$rc"
