#!/usr/bin/env bash
# Builds the safetensors libFuzzer target with clang (ASan + UBSan + libFuzzer) and runs it for a
# bounded time from a seed corpus of valid files. ctest runs it as `fuzz_safetensors`.
# Usage: tests/fuzz/run.sh [SECONDS (default 30)] [WORK_DIR (default a temp dir)]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_TO_RUN=${1:-30}
WORK=${2:-$(mktemp -d)}
CXX=$(command -v clang++ || command -v clang++-14 || true)
[[ -n $CXX ]] || { echo "fuzz/run.sh: clang++ not installed (jobs/setup.sh installs clang)" >&2; exit 1; }
mkdir -p "$WORK/corpus"
"$CXX" -std=c++20 -O1 -g -I"$ROOT" -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer \
  -fno-sanitize-recover=undefined "$ROOT/tests/fuzz/safetensors_fuzz.cpp" "$ROOT/io/safetensors.cpp" \
  "$ROOT/runtime/check.cpp" "$ROOT/runtime/half.cpp" "$ROOT/runtime/durable_file.cpp" \
  "$ROOT/runtime/printable.cpp" -lfmt -o "$WORK/safetensors_fuzz"
# Seeds: small valid files written by the format's rules (8-byte header length, JSON, data).
PY=$(command -v /usr/bin/python3 || command -v python3)
"$PY" - "$WORK/corpus" <<'PYEOF'
import json, struct, sys, os
out = sys.argv[1]
def write(name, tensors, meta=None):
    header, data = {}, b""
    for tname, dtype, shape, payload in tensors:
        header[tname] = {"dtype": dtype, "shape": shape,
                         "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
write("f32", [("w", "F32", [2, 3], struct.pack("<6f", *range(6)))])
write("mixed", [("a", "BF16", [4], b"\x80\x3f" * 4), ("b", "I64", [1], struct.pack("<q", 7))],
      {"format": "pt"})
write("empty", [("e", "F16", [0, 5], b"")])
PYEOF
cd "$WORK"
./safetensors_fuzz -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -print_final_stats=1 corpus \
  2>&1 | tail -15
