#!/usr/bin/env bash
# tests/check_format.sh - fail if any C++/CUDA source differs from .clang-format (list them).
# Usage: tests/check_format.sh [--fix]   (--fix rewrites the files in place)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CF=$(command -v clang-format || command -v clang-format-14 || true)
[[ -n $CF ]] || { echo "check_format.sh: clang-format not installed (jobs/setup.sh installs it)" >&2; exit 1; }
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.h' '*.cpp' '*.cu' '*.cuh')
if [[ ${1:-} == --fix ]]; then
  "$CF" -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$CF" --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  echo "check_format.sh: ${#bad[@]} file(s) not clang-formatted (run tests/check_format.sh --fix):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "check_format.sh: ${#files[@]} files formatted"
