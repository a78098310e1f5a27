// ByteTokenizer: the byte-level tokenizer of `moerun prepare`: ids 0..255 are the bytes of the
// text, 256 marks the end of a document (EOD). Lossless for any input, no vocabulary file.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moerun::io {

class ByteTokenizer {
 public:
  static constexpr int32_t kEod = 256;
  static constexpr int32_t kVocabSize = 257;
  static constexpr const char* kName = "byte";

  // One id per byte; no EOD is added (documents get theirs from the caller).
  static std::vector<int32_t> encode(std::string_view text);
  static void encode_append(std::string_view text, std::vector<int32_t>& out);
  // Bytes back; each EOD becomes eod_text (default: dropped). Ids outside [0, 257) throw.
  static std::string decode(std::span<const int32_t> ids, std::string_view eod_text = {});
};

}  // namespace moerun::io
