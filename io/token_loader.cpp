// Token sources over the two formats, the window permutation, and the sharded window loader.
#include "io/token_loader.h"

#include <algorithm>
#include <filesystem>

#include "io/megatron_dataset.h"
#include "runtime/rng.h"

namespace moerun::io {

int64_t TokenSource::doc_of_token(int64_t pos) const {
  const auto& off = doc_offsets();
  MOERUN_REQUIRE(pos >= 0 && pos < num_tokens(), "token {} is outside {} ({} tokens)", pos,
                 describe(), num_tokens());
  // upper_bound skips empty documents (equal offsets) and lands past the one holding pos.
  return static_cast<int64_t>(std::upper_bound(off.begin(), off.end(), pos) - off.begin()) - 1;
}

namespace {

class Hdf5SplitSource final : public TokenSource {
 public:
  Hdf5SplitSource(std::shared_ptr<const TokenDatasetReader> reader, Split split)
      : reader_(std::move(reader)), split_(split) {}
  std::string describe() const override {
    return fmt::format("token dataset '{}' (split {})", reader_->path(), to_string(split_));
  }
  int64_t num_tokens() const override { return reader_->num_tokens(split_); }
  int32_t vocab_size() const override { return reader_->meta().vocab_size; }
  const std::vector<int64_t>& doc_offsets() const override { return reader_->doc_offsets(split_); }
  int32_t doc_domain(int64_t doc) const override {
    return reader_->doc_domain(split_)[static_cast<size_t>(doc)];
  }
  const std::vector<std::string>& domain_names() const override { return reader_->meta().domains; }
  void read(int64_t begin, std::span<int32_t> out) const override {
    reader_->read_tokens(split_, begin, out);
  }

 private:
  std::shared_ptr<const TokenDatasetReader> reader_;
  Split split_;
};

class MegatronSource final : public TokenSource {
 public:
  explicit MegatronSource(std::shared_ptr<const MegatronDataset> dataset)
      : dataset_(std::move(dataset)) {}
  std::string describe() const override {
    return fmt::format("megatron dataset '{}'", dataset_->prefix());
  }
  int64_t num_tokens() const override { return dataset_->num_tokens(); }
  int32_t vocab_size() const override { return static_cast<int32_t>(dataset_->vocab_size()); }
  const std::vector<int64_t>& doc_offsets() const override { return dataset_->doc_token_offsets(); }
  int32_t doc_domain(int64_t) const override { return 0; }
  const std::vector<std::string>& domain_names() const override { return names_; }
  void read(int64_t begin, std::span<int32_t> out) const override {
    dataset_->read_tokens(begin, out);
  }

 private:
  std::shared_ptr<const MegatronDataset> dataset_;
  std::vector<std::string> names_{"default"};
};

}  // namespace

std::shared_ptr<TokenSource> make_token_source(std::shared_ptr<const TokenDatasetReader> reader,
                                               Split split) {
  return std::make_shared<Hdf5SplitSource>(std::move(reader), split);
}

std::shared_ptr<TokenSource> make_token_source(std::shared_ptr<const MegatronDataset> dataset) {
  return std::make_shared<MegatronSource>(std::move(dataset));
}

std::shared_ptr<TokenSource> open_token_source(const std::string& path, Split split,
                                               int64_t vocab_size) {
  std::error_code ec;
  if (std::filesystem::exists(path + ".idx", ec)) {
    MOERUN_CONFIG_REQUIRE(vocab_size > 0,
                          "'{}' is a Megatron dataset, which does not record its vocabulary: "
                          "the model's vocab size is needed to check the token ids",
                          path);
    return make_token_source(std::make_shared<const MegatronDataset>(path, vocab_size));
  }
  auto reader = std::make_shared<const TokenDatasetReader>(path);
  MOERUN_CONFIG_REQUIRE(vocab_size <= 0 || reader->meta().vocab_size <= vocab_size,
                        "token dataset '{}' has vocab_size {}, more than the model's {}", path,
                        reader->meta().vocab_size, vocab_size);
  return make_token_source(std::move(reader), split);
}

// ---- window permutation ----------------------------------------------------------------------

WindowPermutation::WindowPermutation(int64_t n, uint64_t seed, uint64_t epoch) : n_(n) {
  MOERUN_REQUIRE(n > 0, "a permutation needs at least one element (got {})", n);
  // A balanced Feistel network permutes [0, 4^half_bits); the smallest such domain >= n keeps
  // cycle-walking short (under 4 rounds of the network on average).
  while ((uint64_t{1} << (2 * half_bits_)) < static_cast<uint64_t>(n)) ++half_bits_;
  Rng rng(seed, epoch);
  for (auto& k : keys_) k = rng.next_u64();
}

uint64_t WindowPermutation::feistel(uint64_t x) const {
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  uint64_t left = x >> half_bits_, right = x & mask;
  for (uint64_t key : keys_) {
    uint64_t next = left ^ (mix64(right ^ key) & mask);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

int64_t WindowPermutation::operator()(int64_t slot) const {
  MOERUN_REQUIRE(slot >= 0 && slot < n_, "slot {} is outside the permutation of {}", slot, n_);
  // Cycle-walking: apply the bijection of the larger domain until the value falls inside [0, n);
  // that restriction is itself a bijection of [0, n).
  auto x = static_cast<uint64_t>(slot);
  do {
    x = feistel(x);
  } while (x >= static_cast<uint64_t>(n_));
  return static_cast<int64_t>(x);
}

// ---- loader -----------------------------------------------------------------------------------

TokenLoader::TokenLoader(std::shared_ptr<const TokenSource> source, const LoaderOptions& options)
    : source_(std::move(source)), options_(options) {
  MOERUN_REQUIRE(source_ != nullptr, "TokenLoader needs a token source");
  const auto& o = options_;
  const std::string what = source_->describe();
  MOERUN_CONFIG_REQUIRE(o.seq_len > 0, "--seq-len must be positive (got {})", o.seq_len);
  MOERUN_CONFIG_REQUIRE(o.global_batch > 0, "--global-batch must be positive (got {})",
                        o.global_batch);
  MOERUN_CONFIG_REQUIRE(o.micro_batch > 0, "--micro-batch must be positive (got {})",
                        o.micro_batch);
  MOERUN_CONFIG_REQUIRE(o.dp_size >= 1 && o.dp_rank >= 0 && o.dp_rank < o.dp_size,
                        "data-parallel rank {} is outside the {} data-parallel ranks", o.dp_rank,
                        o.dp_size);
  const int64_t per_micro = o.micro_batch * o.dp_size;
  MOERUN_CONFIG_REQUIRE(o.global_batch % per_micro == 0,
                        "--global-batch ({}) must be a multiple of --micro-batch ({}) x "
                        "data-parallel ranks ({}) = {}",
                        o.global_batch, o.micro_batch, o.dp_size, per_micro);
  micro_batches_ = o.global_batch / per_micro;

  const int64_t n = source_->num_tokens();
  MOERUN_CONFIG_REQUIRE(n >= o.seq_len + 1,
                        "--seq-len {} needs {} tokens per sequence but {} holds only {} tokens",
                        o.seq_len, o.seq_len + 1, what, n);
  windows_ = (n - 1) / o.seq_len;
  MOERUN_CONFIG_REQUIRE(windows_ >= o.global_batch,
                        "{} holds {} tokens: {} windows of --seq-len {} (+1), fewer than "
                        "--global-batch {}, so not one full batch; lower --global-batch or "
                        "--seq-len, or add data",
                        what, n, windows_, o.seq_len, o.global_batch);
  state_.seed = o.seed;
}

std::vector<int64_t> TokenLoader::window_ids(uint64_t epoch, uint64_t step, uint64_t micro) const {
  const auto& o = options_;
  MOERUN_REQUIRE(step < static_cast<uint64_t>(steps_per_epoch()) &&
                     micro < static_cast<uint64_t>(micro_batches_),
                 "step {} micro-batch {} is outside an epoch of {} steps x {} micro-batches", step,
                 micro, steps_per_epoch(), micro_batches_);
  const int64_t part = static_cast<int64_t>(micro) * o.dp_size + o.dp_rank;
  const int64_t first = static_cast<int64_t>(step) * o.global_batch + part * o.micro_batch;
  std::vector<int64_t> ids(static_cast<size_t>(o.micro_batch));
  if (o.order == WindowOrder::kSequential) {
    for (int64_t i = 0; i < o.micro_batch; ++i) ids[static_cast<size_t>(i)] = first + i;
  } else {
    WindowPermutation perm(windows_, state_.seed, epoch);
    for (int64_t i = 0; i < o.micro_batch; ++i) ids[static_cast<size_t>(i)] = perm(first + i);
  }
  return ids;
}

TokenBatch TokenLoader::next_batch() {
  const int64_t T = options_.seq_len, b = options_.micro_batch;
  TokenBatch batch;
  batch.at = state_;
  batch.window = window_ids(state_.epoch, state_.step, state_.micro);
  batch.tokens = Tensor::empty({b, T + 1}, DType::kI32);
  batch.domain.resize(static_cast<size_t>(b));
  int32_t* out = batch.tokens.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t begin = batch.window[static_cast<size_t>(i)] * T;
    source_->read(begin, std::span<int32_t>(out + i * (T + 1), static_cast<size_t>(T + 1)));
    // The first token's document labels the window: cheap, and exact for the common case of
    // documents longer than a window; per-domain losses are what it is for.
    batch.domain[static_cast<size_t>(i)] = source_->doc_domain(source_->doc_of_token(begin));
  }
  if (++state_.micro == static_cast<uint64_t>(micro_batches_)) {
    state_.micro = 0;
    if (++state_.step == static_cast<uint64_t>(steps_per_epoch())) {
      state_.step = 0;
      ++state_.epoch;
    }
  }
  return batch;
}

void TokenLoader::restore(const LoaderState& state) {
  MOERUN_CONFIG_REQUIRE(state.step < static_cast<uint64_t>(steps_per_epoch()),
                        "saved loader step {} is beyond the {} steps of an epoch of {} (was "
                        "--global-batch or --seq-len changed?)",
                        state.step, steps_per_epoch(), source_->describe());
  MOERUN_CONFIG_REQUIRE(state.micro < static_cast<uint64_t>(micro_batches_),
                        "saved loader micro-batch {} is beyond the {} micro-batches of a step",
                        state.micro, micro_batches_);
  state_ = state;
}

}  // namespace moerun::io
