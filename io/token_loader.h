// TokenSource: one split of a token corpus as a single stream of ids with document boundaries
// and a domain per document, over either the moerun HDF5 dataset or a Megatron .bin/.idx pair.
// TokenLoader: cuts that stream into windows, shuffles them per epoch and shards them across
// data-parallel ranks so that the sequences of an optimizer step do not depend on how the
// global batch is split over ranks and micro-batches.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/token_dataset.h"
#include "runtime/tensor.h"

namespace moerun::io {

class MegatronDataset;

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual std::string describe() const = 0;  // file and split, for error messages
  virtual int64_t num_tokens() const = 0;
  virtual int32_t vocab_size() const = 0;
  // (D+1) token offsets of documents in the stream, from 0 to num_tokens().
  virtual const std::vector<int64_t>& doc_offsets() const = 0;
  virtual int32_t doc_domain(int64_t doc) const = 0;
  virtual const std::vector<std::string>& domain_names() const = 0;
  // Tokens [begin, begin + out.size()); ids outside the vocabulary throw.
  virtual void read(int64_t begin, std::span<int32_t> out) const = 0;

  int64_t num_docs() const { return static_cast<int64_t>(doc_offsets().size()) - 1; }
  // The document holding token `pos` (binary search over doc_offsets).
  int64_t doc_of_token(int64_t pos) const;
};

// One split of a moerun HDF5 token dataset; splits of one file may share the reader.
std::shared_ptr<TokenSource> make_token_source(std::shared_ptr<const TokenDatasetReader> reader,
                                               Split split);
// A Megatron dataset: a single domain ("default"); it has no splits, a validation set is a
// second prefix.
std::shared_ptr<TokenSource> make_token_source(std::shared_ptr<const MegatronDataset> dataset);
// By path: an existing PATH.idx means a Megatron prefix (split ignored; vocab_size required),
// otherwise PATH is a moerun HDF5 file (vocab_size, when > 0, must match the file's).
std::shared_ptr<TokenSource> open_token_source(const std::string& path, Split split,
                                               int64_t vocab_size);

enum class WindowOrder { kShuffled, kSequential };  // sequential: validation passes

struct LoaderOptions {
  int64_t seq_len = 0;       // T: a window holds T+1 tokens (inputs and next-token targets)
  int64_t global_batch = 0;  // sequences per optimizer step over all data-parallel ranks
  int64_t micro_batch = 0;   // sequences per rank per micro-batch (the Tensor's first dim)
  int dp_rank = 0;
  int dp_size = 1;
  uint64_t seed = 0;  // same on every rank: the window order is shared
  WindowOrder order = WindowOrder::kShuffled;
};

// The loader's position, saved in checkpoints. It counts optimizer steps, not micro-batches, so
// a run may resume with another data-parallel size or micro-batch split and still continue with
// exactly the sequences it would have seen.
struct LoaderState {
  uint64_t epoch = 0;
  uint64_t step = 0;   // optimizer steps done in this epoch
  uint64_t micro = 0;  // micro-batches of the current step done on this rank
  uint64_t seed = 0;
  bool operator==(const LoaderState&) const = default;
};

struct TokenBatch {
  Tensor tokens;                // (micro_batch, seq_len+1) int32: inputs [:, :-1], targets [:, 1:]
  std::vector<int32_t> domain;  // (micro_batch) domain of the document holding the first token
  std::vector<int64_t> window;  // (micro_batch) window ids, for tests and debugging
  LoaderState at;               // the state this batch was drawn from
};

// A bijection of [0, n) keyed by (seed, epoch): a Feistel network with cycle-walking, so the
// order of billions of windows costs no memory and any slot is computed on its own.
class WindowPermutation {
 public:
  WindowPermutation(int64_t n, uint64_t seed, uint64_t epoch);
  int64_t operator()(int64_t slot) const;

 private:
  uint64_t feistel(uint64_t x) const;
  int64_t n_;
  int half_bits_ = 1;
  uint64_t keys_[6];
};

class TokenLoader {
 public:
  // Validates options against the source; errors name the option (--seq-len, --global-batch,
  // --micro-batch) and the numbers. Deterministic and without communication, so every rank
  // fails alike before the first collective.
  TokenLoader(std::shared_ptr<const TokenSource> source, const LoaderOptions& options);

  // The next micro-batch of this rank; after micro_batches() of them the step advances, after
  // steps_per_epoch() steps the epoch does.
  TokenBatch next_batch();

  // Window w covers tokens [w*T, w*T + T + 1) of the stream.
  int64_t windows_per_epoch() const { return windows_; }
  // Only whole global batches: the last partial one of an epoch is dropped so that every step
  // has the same size on every layout.
  int64_t steps_per_epoch() const { return windows_ / options_.global_batch; }
  int64_t micro_batches() const { return micro_batches_; }  // per step per rank
  const LoaderOptions& options() const { return options_; }
  const TokenSource& source() const { return *source_; }

  // The sharding rule, a pure function: slots [step*G, (step+1)*G) of the epoch's order are cut
  // into dp_size*micro_batches parts of micro_batch slots; part (micro*dp_size + dp_rank) goes
  // to this rank. Any layout with the same G reads the same G windows per step.
  std::vector<int64_t> window_ids(uint64_t epoch, uint64_t step, uint64_t micro) const;

  LoaderState state() const { return state_; }
  // Adopts the saved seed too, so the order continues exactly; throws if micro is not below
  // micro_batches().
  void restore(const LoaderState& state);

 private:
  std::shared_ptr<const TokenSource> source_;
  LoaderOptions options_;
  int64_t windows_ = 0;
  int64_t micro_batches_ = 1;
  LoaderState state_;
};

}  // namespace moerun::io
