// libFuzzer target for the safetensors reader: the input is parsed from memory
// (SafetensorsFile::from_memory, the same validation as open()); when it parses, every tensor is
// read raw and, for float dtypes, converted to f32. Only moerun::Error may escape the reader: any
// other exception, a crash, or a sanitizer report is a finding.
//
// tests/fuzz/run.sh builds and runs it (ctest: fuzz_safetensors): clang with
// -fsanitize=fuzzer,address,undefined, the reader's sources (io/safetensors.cpp and the runtime
// files it uses) compiled into the target so that the reader is instrumented without building the
// rest of moerun, then a bounded run from a seed corpus of valid files that run.sh writes.
// By hand: tests/fuzz/run.sh SECONDS WORK_DIR, then e.g.
//   WORK_DIR/safetensors_fuzz -max_total_time=600 -max_len=4096 -dict=st.dict WORK_DIR/corpus
// More seeds: any SafetensorsWriter output. A useful dictionary (st.dict, one token a line):
//   "\"dtype\"" "\"shape\"" "\"data_offsets\"" "\"__metadata__\"" "\"F32\"" "\"BF16\"" "\"F16\""
//   "\"I64\"" "\"U8\"" "\"BOOL\"" "18446744073709551615" "4294967296" "-1" "[" "]" "{" "}"
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "io/safetensors.h"
#include "runtime/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::byte> bytes(size);
  if (size) std::memcpy(bytes.data(), data, size);
  try {
    const moerun::io::SafetensorsFile f =
        moerun::io::SafetensorsFile::from_memory(std::move(bytes), "fuzz");
    for (const moerun::io::SafetensorsEntry& e : f.entries()) {
      if (e.nbytes() > (1u << 24)) continue;  // parsed fine; do not allocate huge buffers
      std::vector<std::byte> out(e.nbytes());
      f.read(e.name, out);
      if (e.dtype == "F32" || e.dtype == "BF16" || e.dtype == "F16") (void)f.read_f32(e.name);
    }
    (void)f.metadata().dump();
  } catch (const moerun::Error&) {
    // A refused file: the expected outcome for most inputs.
  }
  return 0;
}
