#!/usr/bin/env bash
# The layering rules of DESIGN.md, checked on the sources (ctest: check_layering):
#  1. MPI is called only in comm/: no MPI_ identifier and no <mpi.h> in the code (comments aside)
#     of runtime/, layers/, io/ or jobs/, except the lines of ALLOW below.
#  2. Includes point one way: runtime < comm < layers, io < jobs; layers and io do not include each
#     other; no "../" include. The include path (the source root) would let a header-only
#     backwards include compile, so only this check catches one. tests/ may include everything.
# It first checks itself on a small tree with one violation of each kind.
# Usage: tests/check_layering.sh [SOURCE_ROOT]   (default: the tree this script is in)
set -uo pipefail
ROOT=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# Lines outside comm/ that may name MPI, as "file:fixed text of the line" (each with its reason).
ALLOW=(
  # Parallel HDF5 opens a file on a communicator: HDF5's API takes the raw MPI_Comm (Comm::raw()).
  "io/checkpoint_parts.cpp:H5Pset_fapl_mpio(fapl, world->raw(), MPI_INFO_NULL)"
)

# Folders each folder may include (itself, and the ones below it).
declare -A MAY_INCLUDE=(
  [runtime]="runtime"
  [comm]="runtime comm"
  [layers]="runtime comm layers"
  [io]="runtime comm io"
  [jobs]="runtime comm layers io jobs"
)
FOLDERS="runtime comm layers io jobs"

# Source text without // and /* */ comments or string literals, line numbers kept.
strip_comments() {
  perl -0777 -pe '
    s{("(?:[^"\\\n]|\\.)*")|(//[^\n]*)|(/\*.*?\*/)}{
      defined $1 ? q("") : defined $2 ? "" : join("", map { "\n" } ($3 =~ /\n/g))
    }gse' "$1"
}

check_tree() {  # root -> prints one line per violation
  local root=$1 folder file rel line text allowed a inc target ok
  for folder in $FOLDERS; do
    [[ -d $root/$folder ]] || continue
    while IFS= read -r -d '' file; do
      rel=${file#"$root"/}
      # Rule 1: MPI only in comm/.
      if [[ $folder != comm ]]; then
        while IFS=: read -r line text; do
          allowed=0
          for a in "${ALLOW[@]}"; do
            [[ $rel == "${a%%:*}" && $text == *"${a#*:}"* ]] && allowed=1
          done
          [[ $allowed -eq 1 ]] || echo "$rel:$line: MPI outside comm/: $(sed 's/^ *//' <<<"$text")"
        done < <(strip_comments "$file" | grep -nE '\bMPI_[A-Za-z0-9_]*|<mpi\.h>')
      fi
      # Rule 2: includes point down.
      while IFS=: read -r line text; do
        inc=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([^>"]*)[>"].*/\1/' <<<"$text")
        if [[ $inc == *../* ]]; then
          echo "$rel:$line: relative include \"$inc\" (name the folder: \"$folder/...\")"
          continue
        fi
        target=${inc%%/*}
        [[ " $FOLDERS " == *" $target "* && $inc == */* ]] || continue
        ok=0
        [[ " ${MAY_INCLUDE[$folder]} " == *" $target "* ]] && ok=1
        [[ $ok -eq 1 ]] || echo "$rel:$line: $folder/ includes \"$inc\" ($folder/ may include ${MAY_INCLUDE[$folder]// /, })"
      done < <(grep -nE '^[[:space:]]*#[[:space:]]*include' "$file")
    done < <(find "$root/$folder" -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.cpp' \
      -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) -print0 | sort -z)
  done
}

# ---- self-check: a tree with one violation of each kind, and lines that must pass -------------
self=$(mktemp -d)
trap 'rm -rf "$self"' EXIT
mkdir -p "$self"/{runtime,comm,layers,io,jobs}
cat >"$self/io/bad.cpp" <<'EOF'
#include "comm/comm.h"
#include "layers/model.h"
#include "../jobs/x.h"
// MPI_Allreduce in a comment is fine
/* and MPI_Barrier
   in a block comment */
const char* s = "MPI_Wtime in a string is fine";
double t = MPI_Wtime();
EOF
cat >"$self/runtime/bad.h" <<'EOF'
#include <mpi.h>
#include "comm/comm.h"
#include "runtime/tensor.h"
EOF
cat >"$self/comm/ok.cpp" <<'EOF'
#include "comm/comm.h"
#include "runtime/check.h"
int r = MPI_Barrier(MPI_COMM_WORLD);
EOF
cat >"$self/layers/bad.cpp" <<'EOF'
#include "io/checkpoint.h"
EOF
cat >"$self/jobs/ok.cpp" <<'EOF'
#include "io/checkpoint.h"
#include "layers/model.h"
#include <vector>
EOF
cat >"$self/io/checkpoint_parts.cpp" <<'EOF'
  if (world) H5_CHECK(H5Pset_fapl_mpio(fapl, world->raw(), MPI_INFO_NULL));
EOF
got=$(check_tree "$self")
want=(
  "io/bad.cpp:2: io/ includes \"layers/model.h\""
  "io/bad.cpp:3: relative include"
  "io/bad.cpp:8: MPI outside comm/: double t = MPI_Wtime();"
  "layers/bad.cpp:1: layers/ includes \"io/checkpoint.h\""
  "runtime/bad.h:1: MPI outside comm/"
  "runtime/bad.h:2: runtime/ includes \"comm/comm.h\""
)
self_ok=1
for w in "${want[@]}"; do
  grep -qF -- "$w" <<<"$got" || { echo "check_layering self-check: missed: $w"; self_ok=0; }
done
if [[ $(wc -l <<<"$got") -ne ${#want[@]} ]]; then
  echo "check_layering self-check: expected ${#want[@]} findings, got:"; sed 's/^/    /' <<<"$got"
  self_ok=0
fi
[[ $self_ok -eq 1 ]] || { echo "check_layering: the self-check failed"; exit 2; }

# ---- the real tree ----------------------------------------------------------------------------
found=$(check_tree "$ROOT")
if [[ -n $found ]]; then
  echo "$found"
  echo "check_layering: $(wc -l <<<"$found") violation(s) of the layering rules (DESIGN.md, Folders)"
  exit 1
fi
echo "check_layering: ok (MPI only in comm/; includes point down: runtime < comm < layers, io < jobs)"
