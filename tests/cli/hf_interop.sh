#!/usr/bin/env bash
# moerun <-> HuggingFace transformers for DeepSeek-V2/V3 (MLA), checked by transformers itself:
# tests/hf/interop.py run with the HF venv's python (jobs/setup.sh --hf-venv creates it at
# ${MOERUN_HF_VENV:-/opt/moerun-hf-venv}). Skips (exit 77) when the venv is missing.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
VENV=${MOERUN_HF_VENV:-/opt/moerun-hf-venv}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! [[ -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import torch, transformers, safetensors, numpy" 2>/dev/null; then
  echo "skip: the HF venv $VENV (torch + transformers) is missing: run jobs/setup.sh --hf-venv"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
timeout 1200 "$VENV/bin/python" "$SRC/tests/hf/interop.py" "$MOERUN" "$tmp" "$SRC" ${MOERUN_HF_PARTS:+"$MOERUN_HF_PARTS"}
