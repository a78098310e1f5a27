#!/usr/bin/env bash
# tests/run.sh - install packages, build, and run every moerun test (Debian 12, as root).
#
# Usage: tests/run.sh [--sanitize] [--no-format] [-- CTEST_ARGS...]
#   --sanitize   build a second tree (build-asan/) with ASan + UBSan and run the suite there
#   --no-format  skip the clang-format check
#   CTEST_ARGS   passed to ctest, e.g. -- -R mpi_n2
# The closing line is ctest's summary ("100% tests passed, 0 tests failed out of N").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANITIZE=0
FORMAT=1
CTEST_ARGS=()
while (($#)); do
  case $1 in
    --sanitize) SANITIZE=1 ;;
    --no-format) FORMAT=0 ;;
    -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

if ((SANITIZE)); then
  BUILD_DIR="$ROOT/build-asan"
  "$ROOT/jobs/setup.sh" --build-dir "$BUILD_DIR" --sanitize --werror
else
  BUILD_DIR="$ROOT/build"
  "$ROOT/jobs/setup.sh" --build-dir "$BUILD_DIR" --werror
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
cd "$BUILD_DIR"
exec ctest --output-on-failure --timeout 900 -j "${MOERUN_TEST_JOBS:-2}" "${CTEST_ARGS[@]}"
