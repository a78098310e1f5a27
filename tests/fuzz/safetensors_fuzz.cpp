// libFuzzer target for the safetensors reader: the input is parsed from memory
// (SafetensorsFile::from_memory, the same validation as open()); when it parses, every tensor is
// read raw and, for float dtypes, converted to f32. Only moerun::Error may escape the reader: any
// other exception, a crash, or a sanitizer report is a finding.
//
// tests/fuzz/CMakeLists.txt (clang only; the sources are compiled into the target so that the
// reader is instrumented without instrumenting the rest of moerun_io):
//
//   if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
//     add_executable(safetensors_fuzz safetensors_fuzz.cpp
//                    ${PROJECT_SOURCE_DIR}/io/safetensors.cpp
//                    ${PROJECT_SOURCE_DIR}/runtime/check.cpp)
//     target_include_directories(safetensors_fuzz PRIVATE ${PROJECT_SOURCE_DIR})
//     target_compile_options(safetensors_fuzz PRIVATE -fsanitize=fuzzer,address,undefined
//                            -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
//     target_link_options(safetensors_fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
//     target_link_libraries(safetensors_fuzz PRIVATE fmt::fmt nlohmann_json::nlohmann_json)
//   endif()
//
// By hand, without CMake:
//   clang++ -std=c++20 -O1 -g -I. -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer \
//     -fno-sanitize-recover=undefined tests/fuzz/safetensors_fuzz.cpp io/safetensors.cpp \
//     runtime/check.cpp -lfmt -o safetensors_fuzz
//   ./safetensors_fuzz -max_total_time=60 -max_len=4096 -dict=st.dict CORPUS_DIR
// Seed CORPUS_DIR with a few small valid files (any SafetensorsWriter output). A useful
// dictionary (st.dict, one token a line):
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
