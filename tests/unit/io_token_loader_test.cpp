// TokenLoader: windows hold the right tokens and domains, the order is a deterministic per-epoch
// permutation, sharding is invariant to the data-parallel x micro-batch layout, state restores
// exactly, and bad options fail before training with the option's name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "io/megatron_dataset.h"
#include "io/token_loader.h"
#include "runtime/check.h"
#include "tests/common/expect_error.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

namespace fs = std::filesystem;

// An in-memory source: the loader's logic is tested without files; the file-backed sources are
// checked at the end against the same expectations.
class VectorSource final : public TokenSource {
 public:
  VectorSource(std::vector<int32_t> tokens, std::vector<int64_t> offsets,
               std::vector<int32_t> domains)
      : tokens_(std::move(tokens)), offsets_(std::move(offsets)), domains_(std::move(domains)) {}
  std::string describe() const override { return "vector source"; }
  int64_t num_tokens() const override { return static_cast<int64_t>(tokens_.size()); }
  int32_t vocab_size() const override { return 1 << 20; }
  const std::vector<int64_t>& doc_offsets() const override { return offsets_; }
  int32_t doc_domain(int64_t doc) const override { return domains_[doc]; }
  const std::vector<std::string>& domain_names() const override { return names_; }
  void read(int64_t begin, std::span<int32_t> out) const override {
    std::copy_n(tokens_.begin() + begin, out.size(), out.begin());
  }
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  std::vector<int32_t> tokens_;
  std::vector<int64_t> offsets_;
  std::vector<int32_t> domains_;
  std::vector<std::string> names_{"d0", "d1", "d2"};
};

// Random documents; token values are random so that a window's content identifies it.
std::shared_ptr<VectorSource> random_source(std::mt19937_64& gen, int64_t n_tokens) {
  std::vector<int32_t> tokens(n_tokens);
  for (auto& t : tokens) t = static_cast<int32_t>(gen() % 1000000);
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> domains;
  while (offsets.back() < n_tokens) {
    offsets.push_back(std::min<int64_t>(n_tokens, offsets.back() + 1 + gen() % 60));
    domains.push_back(static_cast<int32_t>(gen() % 3));
  }
  return std::make_shared<VectorSource>(std::move(tokens), std::move(offsets), std::move(domains));
}

LoaderOptions options(int64_t T, int64_t G, int64_t b, int dp_rank, int dp_size, uint64_t seed) {
  LoaderOptions o;
  o.seq_len = T;
  o.global_batch = G;
  o.micro_batch = b;
  o.dp_rank = dp_rank;
  o.dp_size = dp_size;
  o.seed = seed;
  return o;
}

TEST(IoTokenLoader, PermutationIsABijection) {
  const TestSeed seed = TestSeed::fresh();
  for (int64_t n : {1, 2, 3, 5, 16, 17, 1000, 4097}) {
    WindowPermutation perm(n, seed, 3);
    std::vector<int> hit(n, 0);
    for (int64_t s = 0; s < n; ++s) ++hit[perm(s)];
    EXPECT_TRUE(std::all_of(hit.begin(), hit.end(), [](int h) { return h == 1; })) << "n " << n;
  }
  // Different epochs, different orders (for a size where a repeat is astronomically unlikely).
  WindowPermutation a(1000, seed, 0), b(1000, seed, 1);
  int same = 0;
  for (int64_t s = 0; s < 1000; ++s) same += a(s) == b(s);
  EXPECT_LT(same, 50);
}

TEST(IoTokenLoader, WindowsHoldTheStreamAndTheirDomain) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  auto src = random_source(gen, 5000);
  const int64_t T = 31;
  TokenLoader loader(src, options(T, 8, 4, 0, 1, seed));
  EXPECT_EQ(loader.windows_per_epoch(), (5000 - 1) / T);
  EXPECT_EQ(loader.steps_per_epoch(), loader.windows_per_epoch() / 8);
  EXPECT_EQ(loader.micro_batches(), 2);
  for (int i = 0; i < 10; ++i) {
    TokenBatch batch = loader.next_batch();
    ASSERT_EQ(batch.tokens.shape(), (std::vector<int64_t>{4, T + 1}));
    ASSERT_EQ(batch.tokens.dtype(), DType::kI32);
    const int32_t* p = batch.tokens.data<int32_t>();
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t w = batch.window[r];
      ASSERT_TRUE(
          std::equal(p + r * (T + 1), p + (r + 1) * (T + 1), src->tokens().begin() + w * T));
      // Reference domain: linear scan for the document holding the window's first token.
      int64_t doc = 0;
      while (src->doc_offsets()[doc + 1] <= w * T) ++doc;
      EXPECT_EQ(batch.domain[r], src->doc_domain(doc));
    }
  }
}

TEST(IoTokenLoader, EpochVisitsEveryWindowOnceAndIsDeterministic) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  auto src = random_source(gen, 4000);
  TokenLoader a(src, options(20, 6, 3, 0, 1, seed)), b(src, options(20, 6, 3, 0, 1, seed));
  TokenLoader other_seed(src, options(20, 6, 3, 0, 1, seed + 1));
  const int64_t per_epoch = a.steps_per_epoch() * a.micro_batches();
  std::set<int64_t> seen;
  bool differs = false;
  for (int64_t i = 0; i < per_epoch; ++i) {
    auto x = a.next_batch(), y = b.next_batch(), z = other_seed.next_batch();
    ASSERT_EQ(x.window, y.window);
    differs |= x.window != z.window;
    for (int64_t w : x.window) EXPECT_TRUE(seen.insert(w).second) << "window " << w << " twice";
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(static_cast<int64_t>(seen.size()), a.steps_per_epoch() * 6);
  EXPECT_EQ(a.state().epoch, 1u);
  EXPECT_EQ(a.state().step, 0u);
  // A sequential loader walks windows in order (validation passes).
  auto o = options(20, 6, 3, 0, 1, seed);
  o.order = WindowOrder::kSequential;
  TokenLoader seq(src, o);
  EXPECT_EQ(seq.next_batch().window, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(seq.next_batch().window, (std::vector<int64_t>{3, 4, 5}));
}

// The sequences of one optimizer step depend only on the global batch: here world size 2 with one
// micro-batch, world size 1 with two micro-batches and world size 4 with a micro-batch of 1.
TEST(IoTokenLoader, ShardingIsInvariantToDataParallelLayout) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  auto src = random_source(gen, 3000);
  const int64_t G = 8;
  struct Layout {
    int dp_size;
    int64_t micro_batch;
  };
  std::vector<std::multiset<std::vector<int32_t>>> reference;  // per step: the sequences
  for (Layout layout : {Layout{1, 4}, Layout{2, 4}, Layout{4, 2}, Layout{8, 1}, Layout{1, 8}}) {
    SCOPED_TRACE(::testing::Message() << "dp " << layout.dp_size << " b " << layout.micro_batch);
    std::vector<TokenLoader> ranks;
    for (int r = 0; r < layout.dp_size; ++r)
      ranks.emplace_back(src, options(16, G, layout.micro_batch, r, layout.dp_size, seed));
    const int64_t steps = ranks[0].steps_per_epoch() + 3;  // into the second epoch
    for (int64_t step = 0; step < steps; ++step) {
      std::multiset<std::vector<int32_t>> seqs;
      for (auto& loader : ranks)
        for (int64_t m = 0; m < loader.micro_batches(); ++m) {
          auto batch = loader.next_batch();
          const int32_t* p = batch.tokens.data<int32_t>();
          for (int64_t r = 0; r < layout.micro_batch; ++r)
            seqs.insert(std::vector<int32_t>(p + r * 17, p + (r + 1) * 17));
        }
      ASSERT_EQ(static_cast<int64_t>(seqs.size()), G);
      if (static_cast<int64_t>(reference.size()) <= step) reference.push_back(seqs);
      ASSERT_EQ(seqs, reference[step]) << "step " << step;
    }
  }
}

TEST(IoTokenLoader, RestoredStateContinuesIdentically) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  auto src = random_source(gen, 2000);
  TokenLoader original(src, options(10, 4, 2, 1, 2, seed));
  const int64_t per_epoch = original.steps_per_epoch() * original.micro_batches();
  const int64_t stop = per_epoch + 3;  // mid-step of the second epoch (micro = 1)
  for (int64_t i = 0; i < stop; ++i) original.next_batch();
  const LoaderState saved = original.state();
  EXPECT_EQ(saved.epoch, 1u);

  // A fresh loader with another seed on the command line: the saved seed wins.
  TokenLoader resumed(src, options(10, 4, 2, 1, 2, seed ^ 0xabcdef));
  resumed.restore(saved);
  EXPECT_EQ(resumed.state(), saved);
  for (int64_t i = 0; i < per_epoch + 5; ++i) {
    auto x = original.next_batch(), y = resumed.next_batch();
    ASSERT_EQ(x.window, y.window) << "batch " << i;
    ASSERT_EQ(x.at, y.at);
    ASSERT_TRUE(std::equal(x.tokens.span<int32_t>().begin(), x.tokens.span<int32_t>().end(),
                           y.tokens.span<int32_t>().begin()));
  }
  LoaderState bad = saved;
  bad.micro = 5;
  EXPECT_THROW(resumed.restore(bad), Error);
  bad = saved;
  bad.step = 1u << 30;
  EXPECT_THROW(resumed.restore(bad), Error);
}

using ::moerun::testing::expect_error;

TEST(IoTokenLoader, BadOptionsNameTheOption) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  auto src = random_source(gen, 100);
  expect_error([&] { TokenLoader l(src, options(100, 1, 1, 0, 1, 0)); },
               {"--seq-len 100", "101 tokens", "100 tokens", "vector source"});
  expect_error([&] { TokenLoader l(src, options(10, 16, 1, 0, 1, 0)); },
               {"9 windows", "--global-batch 16", "--seq-len 10"});
  expect_error([&] { TokenLoader l(src, options(10, 6, 4, 0, 1, 0)); },
               {"--global-batch (6)", "--micro-batch (4)"});
  expect_error([&] { TokenLoader l(src, options(0, 1, 1, 0, 1, 0)); }, {"--seq-len"});
  expect_error([&] { TokenLoader l(src, options(10, 2, 1, 2, 2, 0)); }, {"rank 2"});
  // Exactly enough: 11 tokens make one window of 10+1.
  std::vector<int32_t> tokens(11, 3);
  auto tiny =
      std::make_shared<VectorSource>(tokens, std::vector<int64_t>{0, 11}, std::vector<int32_t>{0});
  TokenLoader l(tiny, options(10, 1, 1, 0, 1, 0));
  EXPECT_EQ(l.windows_per_epoch(), 1);
  EXPECT_EQ(l.next_batch().window, (std::vector<int64_t>{0}));
  EXPECT_EQ(l.state().epoch, 1u);
}

// The file-backed sources through the same loader: an HDF5 split and a Megatron prefix.
TEST(IoTokenLoader, FileSources) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("moerun_io_loader_{}_{:x}", ::getpid(), uint64_t{rd()});
  fs::create_directories(dir);
  {
    TokenDatasetMeta meta;
    meta.domains = {"x", "y"};
    TokenDatasetWriter writer((dir / "t.h5").string(), meta);
    std::vector<int32_t> stream;
    std::vector<int32_t> doc_domains;
    for (int d = 0; d < 30; ++d) {
      std::vector<int32_t> doc(1 + gen() % 50);
      for (auto& t : doc) t = static_cast<int32_t>(gen() % 256);
      doc.back() = ByteTokenizer::kEod;
      writer.add_document(Split::kTrain, d % 2, doc);
      stream.insert(stream.end(), doc.begin(), doc.end());
    }
    writer.close();
    auto source = open_token_source((dir / "t.h5").string(), Split::kTrain, 257);
    EXPECT_EQ(source->num_tokens(), static_cast<int64_t>(stream.size()));
    EXPECT_EQ(source->domain_names(), meta.domains);
    EXPECT_EQ(source->num_docs(), 30);
    TokenLoader loader(source, options(8, 2, 2, 0, 1, 5));
    auto batch = loader.next_batch();
    const int32_t* p = batch.tokens.data<int32_t>();
    for (int r = 0; r < 2; ++r)
      EXPECT_TRUE(std::equal(p + r * 9, p + r * 9 + 9, stream.begin() + batch.window[r] * 8));
    EXPECT_THROW(open_token_source((dir / "t.h5").string(), Split::kTrain, 100), Error);
    // The validation split is empty here: the loader says so before training.
    auto val = open_token_source((dir / "t.h5").string(), Split::kValidation, 257);
    expect_error([&] { TokenLoader l(val, options(8, 2, 2, 0, 1, 5)); },
                 {"split validation", "--seq-len 8"});
  }
  {
    // Megatron, found by prefix: one domain, documents from doc_idx.
    const std::string prefix = (dir / "m").string();
    std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4}, {5, 6}, {7, 8, 9, 10, 11, 12}};
    write_megatron_dataset(prefix, 8, seqs, {0, 2, 3});
    expect_error([&] { open_token_source(prefix, Split::kTrain, 0); }, {prefix, "vocab"});
    auto source = open_token_source(prefix, Split::kTrain, 50000);
    EXPECT_EQ(source->num_tokens(), 12);
    EXPECT_EQ(source->doc_offsets(), (std::vector<int64_t>{0, 6, 12}));
    EXPECT_EQ(source->doc_of_token(6), 1);
    EXPECT_EQ(source->domain_names().size(), 1u);
    auto o = options(3, 3, 1, 0, 1, 0);
    o.order = WindowOrder::kSequential;
    TokenLoader loader(source, o);
    std::vector<std::vector<int32_t>> want = {{1, 2, 3, 4}, {4, 5, 6, 7}, {7, 8, 9, 10}};
    for (int i = 0; i < 3; ++i) {
      auto batch = loader.next_batch();
      auto got = batch.tokens.span<int32_t>();
      EXPECT_EQ(std::vector<int32_t>(got.begin(), got.end()), want[i]);
      EXPECT_EQ(batch.domain[0], 0);
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moerun::io
