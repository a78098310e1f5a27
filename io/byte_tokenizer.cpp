// Byte-level encode/decode.
#include "io/byte_tokenizer.h"

#include "runtime/check.h"

namespace moerun::io {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  encode_append(text, out);
  return out;
}

void ByteTokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) {
  out.reserve(out.size() + text.size());
  // Through unsigned char: a plain char is signed here and bytes >= 128 would go negative.
  for (char c : text) out.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids, std::string_view eod_text) {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id == kEod) {
      out.append(eod_text);
      continue;
    }
    MOERUN_REQUIRE(id >= 0 && id < 256,
                   "token id {} at position {} is not a byte-tokenizer id "
                   "(vocab {})",
                   id, i, kVocabSize);
    out.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return out;
}

}  // namespace moerun::io
