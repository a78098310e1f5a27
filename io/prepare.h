// `moerun prepare`: text files and a generated arithmetic domain -> one moerun token dataset
// (byte tokenizer, a deterministic train/validation split). Runs on one process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moerun::io {

enum class Progress { kQuiet, kStderr };

struct PrepareOptions {
  // "DOMAIN=PATH": PATH is a file (one document) or a directory read recursively (every file
  // one document; hidden files and directories skipped; files in sorted path order). A domain
  // may be given several times; its paths are read in the order given.
  std::vector<std::string> inputs;
  // Only files with one of these extensions (".py" or "py") are read from directories; empty =
  // all files. A PATH naming a file directly is always read.
  std::vector<std::string> extensions;
  int64_t arithmetic_docs = 0;  // documents of the generated "arithmetic" domain (0 = none)
  uint64_t seed = 0;            // arithmetic content and the split
  double validation_fraction = 0.05;
  std::string output;  // the .h5 file written
  Progress progress = Progress::kStderr;

  void validate() const;  // throws naming the option (--input, --validation-fraction, ...)
};

struct DomainSummary {
  std::string name;
  int64_t train_docs = 0, train_tokens = 0;
  int64_t validation_docs = 0, validation_tokens = 0;
  int64_t skipped_empty = 0;  // empty files (no document)
};

struct PrepareSummary {
  std::string output;
  std::vector<DomainSummary> domains;  // in domain-id order
  int64_t total_tokens() const;
  std::string to_string() const;  // a table for the CLI
};

// The generated arithmetic document i for a seed: a few lines like "12+7=19\n".
std::string arithmetic_document(uint64_t seed, int64_t index);

// True if document `index` of a domain of `n_docs` goes to validation: a hash of (seed, domain,
// index) below the fraction, then fixed up so a domain of >= 2 documents has at least one in
// each split. Exposed for tests.
std::vector<bool> validation_mask(uint64_t seed, int64_t domain, int64_t n_docs, double fraction);

PrepareSummary prepare_dataset(const PrepareOptions& options);

}  // namespace moerun::io
