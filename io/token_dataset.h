// The moerun token dataset: one HDF5 file with a train and a validation split of tokenised
// documents, written once by `moerun prepare` (one process) and read by every rank on its own.
//
// Layout (format "moerun-tokens", version 1):
//   /                 attributes format, version, vocab_size, eod_id, tokenizer, domains (strings)
//   /train, /validation
//     tokens       (N)   int32, chunked + shuffle + deflate; every document ends with eod_id
//     doc_offsets  (D+1) int64; document d is tokens[doc_offsets[d], doc_offsets[d+1])
//     doc_domain   (D)   int32; index into the root `domains` attribute
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/byte_tokenizer.h"

namespace moerun::io {

inline constexpr const char* kTokenFormat = "moerun-tokens";
inline constexpr int64_t kTokenFormatVersion = 1;

enum class Split { kTrain, kValidation };
const char* to_string(Split split);  // "train" / "validation": also the group name
Split parse_split(std::string_view name);

struct TokenDatasetMeta {
  int32_t vocab_size = ByteTokenizer::kVocabSize;
  int32_t eod_id = ByteTokenizer::kEod;
  std::string tokenizer = ByteTokenizer::kName;
  std::vector<std::string> domains;  // doc_domain values index this list; at least one
  void validate() const;             // throws naming the bad field
};

enum class Compression { kNone, kDeflate };

// Streams documents into the file: tokens go to disk in chunks, only the per-document index
// (12 bytes a document) stays in memory until close().
class TokenDatasetWriter {
 public:
  // Writes PATH.tmp and renames it to PATH in close(), so an interrupted prepare never leaves a
  // file that looks complete.
  TokenDatasetWriter(std::string path, TokenDatasetMeta meta,
                     Compression compression = Compression::kDeflate);
  ~TokenDatasetWriter();  // without close(): the temp file is removed
  TokenDatasetWriter(const TokenDatasetWriter&) = delete;
  TokenDatasetWriter& operator=(const TokenDatasetWriter&) = delete;

  // tokens must already end with eod_id; ids are checked against vocab_size.
  void add_document(Split split, int32_t domain, std::span<const int32_t> tokens);
  void close();
  int64_t num_docs(Split split) const;
  int64_t num_tokens(Split split) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Read-only view of one token dataset file. Each rank opens it independently (default file
// driver, HDF5 file locking off, as HDF5_USE_FILE_LOCKING=FALSE would, because shared
// filesystems often lack locks); only the index arrays are loaded, tokens are read by slice.
class TokenDatasetReader {
 public:
  // Throws naming the file: missing, not HDF5, wrong format or version, missing dataset,
  // inconsistent index.
  explicit TokenDatasetReader(std::string path);
  ~TokenDatasetReader();
  TokenDatasetReader(const TokenDatasetReader&) = delete;
  TokenDatasetReader& operator=(const TokenDatasetReader&) = delete;

  const std::string& path() const;
  const TokenDatasetMeta& meta() const;
  int64_t num_tokens(Split split) const;
  int64_t num_docs(Split split) const;
  const std::vector<int64_t>& doc_offsets(Split split) const;  // (D+1)
  const std::vector<int32_t>& doc_domain(Split split) const;   // (D)
  // Tokens [begin, begin + out.size()) of the split; ids outside the vocabulary throw, naming
  // the file, split and position.
  void read_tokens(Split split, int64_t begin, std::span<int32_t> out) const;
  // Whole documents, for tests and inspection.
  std::vector<int32_t> read_document(Split split, int64_t doc) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moerun::io
