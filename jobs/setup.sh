#!/usr/bin/env bash
# jobs/setup.sh - install moerun's build/test packages (Debian 12, as root) and build the project.
#
# Usage: jobs/setup.sh [--no-build] [--build-dir DIR] [--sanitize] [--werror] [--hf-venv]
#   --no-build      only install packages
#   --build-dir     CMake build tree (default: build/ in the repository root)
#   --sanitize      configure with ASan + UBSan (MOERUN_SANITIZE=ON)
#   --werror        treat compiler warnings as errors (MOERUN_WERROR=ON; CI uses this)
#   --hf-venv       also create the Python venv of the HuggingFace interop tests (tests/hf/):
#                   ${MOERUN_HF_VENV:-/opt/moerun-hf-venv} with torch==2.15.0 (CPU use),
#                   transformers==5.24.0, numpy, safetensors from PyPI (~6 min, 5.6 GB; skipped
#                   when those versions are there). Without network it says so and goes on: the
#                   hf tests then skip.
# Safe to re-run: packages already installed are skipped, the build is incremental.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR="$ROOT/build"
DO_BUILD=1
SANITIZE=OFF
WERROR=OFF
HF_VENV=0

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --no-build) DO_BUILD=0 ;;
    --build-dir)
      [[ $# -ge 2 ]] || { echo "setup.sh: --build-dir needs a directory" >&2; exit 2; }
      BUILD_DIR=$2; shift ;;
    --sanitize) SANITIZE=ON ;;
    --werror) WERROR=ON ;;
    --hf-venv) HF_VENV=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:${PATH}

PKGS=(build-essential cmake ninja-build pkg-config
      libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
      libboost-program-options-dev libgtest-dev libbenchmark-dev libopenblas-dev
      nlohmann-json3-dev libfmt-dev libspdlog-dev clang-format python3 python3-numpy python3-venv
      fortunes gnuplot-nox clang  # fortunes: prose of the default dataset; gnuplot: jobs/plot.sh;
      # clang: the libFuzzer target (tests/fuzz/run.sh); Slurm + munge: slurm/ and the tests'
      # one-host cluster (slurm/local-cluster.sh), started by tests/run.sh, not by the packages
      munge slurm-wlm slurmctld slurmd slurm-client)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup.sh: apt-get install ${missing[*]}"
  # No init system here: keep postinst scripts from trying to start services.
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  log=$(mktemp /tmp/moerun-apt.XXXXXX.log)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$log" 2>&1; then
    tail -30 "$log" >&2
    [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    echo "setup.sh: apt-get install failed (full log: $log)" >&2
    exit 1
  fi
  [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  rm -f "$log"
else
  echo "setup.sh: all ${#PKGS[@]} packages installed"
fi

# The HF interop venv (tests/hf/): pinned versions, created once.
TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.24.0
hf_venv() {
  local venv=${MOERUN_HF_VENV:-/opt/moerun-hf-venv}
  local check="import torch, transformers, numpy, safetensors, sys
sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION'
         and transformers.__version__ == '$TRANSFORMERS_VERSION' else 1)"
  if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "setup.sh: HF venv $venv has torch $TORCH_VERSION + transformers $TRANSFORMERS_VERSION"
    return 0
  fi
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! apt-get install -y -qq --no-install-recommends python3-venv \
        >/dev/null 2>&1; then
      echo "setup.sh: WARNING: python3-venv is missing and could not be installed; no HF venv" \
        "($venv): the hf tests will skip" >&2
      return 0
    fi
  fi
  echo "setup.sh: creating the HF venv $venv (torch==$TORCH_VERSION" \
    "transformers==$TRANSFORMERS_VERSION; several minutes)"
  local log
  log=$(mktemp /tmp/moerun-hf-venv.XXXXXX.log)
  if { python3 -m venv "$venv" &&
       "$venv/bin/pip" install -q --upgrade pip &&
       "$venv/bin/pip" install -q "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
         numpy safetensors; } >"$log" 2>&1 && "$venv/bin/python" -c "$check"; then
    rm -f "$log"
    echo "setup.sh: HF venv $venv ready"
  else
    tail -5 "$log" >&2
    echo "setup.sh: WARNING: could not create the HF venv $venv (no network? full log: $log);" \
      "going on without it: the hf tests will skip" >&2
  fi
}
((HF_VENV)) && hf_venv

((DO_BUILD)) || exit 0

JOBS=${MOERUN_BUILD_JOBS:-$(nproc)}
# Only the switches asked for are passed: re-running setup.sh keeps an existing tree's settings
# (and its objects) instead of flipping them back to the defaults.
args=()
[[ $SANITIZE == ON ]] && args+=(-DMOERUN_SANITIZE=ON)
[[ $WERROR == ON ]] && args+=(-DMOERUN_WERROR=ON)
if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${args[@]}" >/dev/null
elif ((${#args[@]})); then
  cmake -S "$ROOT" -B "$BUILD_DIR" "${args[@]}" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup.sh: built into $BUILD_DIR"
