// Reader of Megatron-LM indexed datasets (PREFIX.idx + PREFIX.bin, "MMIDIDX" version 1), so
// corpora tokenised for Megatron train here without conversion.
//
// .idx: magic "MMIDIDX\0\0" (9 bytes), u64 version (1), u8 dtype code, u64 sequence count S,
//       u64 document count D, int32 sizes[S], int64 pointers[S] (byte offsets into .bin),
//       int64 doc_idx[D] (sequence index where each document starts; 0 first, S last),
//       all little-endian.
// .bin: the token ids of every sequence, of the dtype, at pointers[i].
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moerun::io {

enum class MegatronDType : uint8_t {
  kU8 = 1,
  kI8 = 2,
  kI16 = 3,
  kI32 = 4,
  kI64 = 5,
  kF64 = 6,
  kF32 = 7,
  kU16 = 8
};
// Bytes per element; 0 for a code that is not a Megatron dtype.
int64_t megatron_dtype_size(uint8_t code);
const char* megatron_dtype_name(uint8_t code);

inline constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr int64_t kMegatronHeaderBytes = 9 + 8 + 1 + 8 + 8;

// Both files are memory-mapped read-only; the index arrays are copied out (the header leaves
// them unaligned) and checked once on open, token ids are checked against the caller's
// vocabulary on every read because scanning a whole corpus at start-up would be slow.
class MegatronDataset {
 public:
  // Throws naming the file for: missing files, bad magic/version/dtype, a truncated or oversized
  // .idx, sequences outside the .bin, a malformed doc_idx.
  MegatronDataset(std::string prefix, int64_t vocab_size);
  ~MegatronDataset();
  MegatronDataset(MegatronDataset&& other) noexcept;
  MegatronDataset& operator=(MegatronDataset&& other) noexcept;
  MegatronDataset(const MegatronDataset&) = delete;
  MegatronDataset& operator=(const MegatronDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  std::string idx_path() const { return prefix_ + ".idx"; }
  uint8_t dtype_code() const { return dtype_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_sequences() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_offsets_.size()) - 1; }
  int64_t num_tokens() const { return seq_offsets_.back(); }
  const std::vector<int32_t>& sizes() const { return sizes_; }
  const std::vector<int64_t>& doc_idx() const { return doc_idx_; }  // (D) as stored
  // Token offsets in the concatenated stream: sequence i is [seq_offsets[i], seq_offsets[i+1]).
  const std::vector<int64_t>& seq_offsets() const { return seq_offsets_; }
  // Token offsets of documents in the stream (num_documents()+1 entries).
  const std::vector<int64_t>& doc_token_offsets() const { return doc_offsets_; }

  // One sequence as int32 ids; ids outside [0, vocab_size) throw naming the file, the sequence
  // and the vocabulary.
  std::vector<int32_t> read_sequence(int64_t seq) const;
  // Tokens [begin, begin + out.size()) of the concatenated stream, across sequences.
  void read_tokens(int64_t begin, std::span<int32_t> out) const;
  // Reads every sequence once (for `moerun inspect` and tests): throws on the first bad id.
  void validate_all() const;

 private:
  void convert(int64_t seq, int64_t first, int64_t count, int32_t* out) const;
  void unmap();

  std::string prefix_;
  int64_t vocab_size_ = 0;
  uint8_t dtype_ = 0;
  int64_t item_bytes_ = 0;
  const std::byte* bin_ = nullptr;  // mapped .bin
  int64_t bin_bytes_ = 0;
  std::vector<int32_t> sizes_;        // (S) tokens per sequence
  std::vector<int64_t> pointers_;     // (S) byte offsets into .bin
  std::vector<int64_t> doc_idx_;      // (D)
  std::vector<int64_t> seq_offsets_;  // (S+1)
  std::vector<int64_t> doc_offsets_;  // (documents+1) token offsets
};

// Writes PREFIX.bin/.idx the way Megatron's IndexedDatasetBuilder does (sequences back to back,
// doc_idx as given, normally [0, ..., S]): for test fixtures and conversions. Values must fit
// the dtype; float dtypes are refused.
void write_megatron_dataset(const std::string& prefix, uint8_t dtype_code,
                            const std::vector<std::vector<int64_t>>& sequences,
                            const std::vector<int64_t>& doc_idx);

}  // namespace moerun::io
