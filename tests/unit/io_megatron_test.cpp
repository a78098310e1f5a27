// Megatron .bin/.idx reader: fixtures of every integer dtype written by a tiny writer here,
// stream reads across sequences, and the errors of corrupt or mismatched files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/megatron_dataset.h"
#include "runtime/check.h"
#include "tests/common/expect_error.h"
#include "tests/common/temp_dir.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

namespace fs = std::filesystem;

using ::moerun::testing::TempDir;

// The fixture writer is io's write_megatron_dataset; the corruption tests below patch bytes at
// offsets computed here from the documented layout, which checks that layout independently.
void write_megatron(const std::string& prefix, uint8_t dtype,
                    const std::vector<std::vector<int64_t>>& seqs, std::vector<int64_t> doc_idx) {
  write_megatron_dataset(prefix, dtype, seqs, doc_idx);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

using ::moerun::testing::expect_error;

TEST(IoMegatron, ReadsEveryIntegerDtype) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  // (code, largest id the dtype holds)
  const std::vector<std::pair<uint8_t, int64_t>> dtypes = {{1, 255},    {2, 127},    {3, 32767},
                                                           {4, 100000}, {5, 100000}, {8, 65535}};
  for (auto [code, max_id] : dtypes) {
    SCOPED_TRACE(::testing::Message() << "dtype " << megatron_dtype_name(code));
    const int64_t vocab = max_id + 1;
    std::vector<std::vector<int64_t>> seqs(1 + gen() % 12);
    std::vector<int64_t> stream;
    for (auto& s : seqs) {
      s.resize(gen() % 40);  // empty sequences too
      for (auto& v : s) v = static_cast<int64_t>(gen() % vocab);
      stream.insert(stream.end(), s.begin(), s.end());
    }
    // Documents of one or two sequences each.
    std::vector<int64_t> doc_idx{0};
    while (doc_idx.back() < static_cast<int64_t>(seqs.size()))
      doc_idx.push_back(std::min<int64_t>(doc_idx.back() + 1 + gen() % 2, seqs.size()));
    const std::string prefix = dir.prefix(fmt::format("ds_{}", code));
    write_megatron(prefix, code, seqs, doc_idx);

    MegatronDataset ds(prefix, vocab);
    EXPECT_EQ(ds.dtype_code(), code);
    ASSERT_EQ(ds.num_sequences(), static_cast<int64_t>(seqs.size()));
    ASSERT_EQ(ds.num_tokens(), static_cast<int64_t>(stream.size()));
    ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(doc_idx.size()) - 1);
    EXPECT_EQ(ds.doc_idx(), doc_idx);
    for (size_t d = 0; d < doc_idx.size(); ++d)
      EXPECT_EQ(ds.doc_token_offsets()[d], ds.seq_offsets()[doc_idx[d]]);
    for (size_t i = 0; i < seqs.size(); ++i) {
      auto got = ds.read_sequence(static_cast<int64_t>(i));
      ASSERT_EQ(got.size(), seqs[i].size());
      for (size_t t = 0; t < got.size(); ++t) ASSERT_EQ(got[t], seqs[i][t]);
    }
    for (int trial = 0; trial < 30 && !stream.empty(); ++trial) {
      const int64_t begin = static_cast<int64_t>(gen() % stream.size());
      const int64_t count = static_cast<int64_t>(gen() % (stream.size() - begin + 1));
      std::vector<int32_t> out(count, -7);
      ds.read_tokens(begin, out);
      for (int64_t t = 0; t < count; ++t) ASSERT_EQ(out[t], stream[begin + t]);
    }
    EXPECT_NO_THROW(ds.validate_all());
    MegatronDataset moved(std::move(ds));
    EXPECT_EQ(moved.num_tokens(), static_cast<int64_t>(stream.size()));
  }
}

TEST(IoMegatron, OutOfVocabIdNamesFileSequenceAndVocab) {
  TempDir dir;
  const std::string prefix = dir.prefix("oov");
  write_megatron(prefix, 8, {{1, 2, 3}, {4, 5000, 6}}, {0, 1, 2});
  MegatronDataset ds(prefix, 1000);
  EXPECT_NO_THROW(ds.read_sequence(0));
  expect_error([&] { ds.read_sequence(1); },
               {prefix + ".bin", "sequence 1", "5000", "vocab size 1000", "position 1"});
  std::vector<int32_t> out(3);
  expect_error([&] { ds.read_tokens(2, out); }, {prefix + ".bin", "sequence 1"});
  expect_error([&] { ds.validate_all(); }, {"5000"});
  // i8 can store negative ids, which are never valid.
  write_megatron(dir.prefix("neg"), 2, {{1, -3}}, {0, 1});
  MegatronDataset neg(dir.prefix("neg"), 100);
  expect_error([&] { neg.read_sequence(0); }, {"-3"});
}

TEST(IoMegatron, CorruptIndexErrorsNameTheFile) {
  TempDir dir;
  const std::string prefix = dir.prefix("good");
  write_megatron(prefix, 4, {{1, 2, 3}, {4, 5}}, {0, 2});
  const std::string idx = read_all(prefix + ".idx");
  const std::string bad = dir.prefix("bad");
  std::filesystem::copy_file(prefix + ".bin", bad + ".bin");

  auto with_idx = [&](std::string bytes) {
    write_all(bad + ".idx", bytes);
    return [&] { MegatronDataset ds(bad, 100); };
  };
  expect_error(with_idx(idx.substr(0, 20)), {bad + ".idx", "truncated"});
  expect_error(with_idx(idx.substr(0, idx.size() - 4)), {bad + ".idx", "truncated"});
  expect_error(with_idx(idx + "xx"), {bad + ".idx", "too long"});
  std::string magic = idx;
  magic[0] = 'X';
  expect_error(with_idx(magic), {bad + ".idx", "MMIDIDX"});
  std::string version = idx;
  version[9] = 2;
  expect_error(with_idx(version), {bad + ".idx", "version 2"});
  std::string dtype = idx;
  dtype[17] = 9;
  expect_error(with_idx(dtype), {bad + ".idx", "dtype code 9"});
  dtype[17] = 7;
  expect_error(with_idx(dtype), {bad + ".idx", "f32"});
  std::string huge = idx;
  uint64_t n = uint64_t{1} << 62;
  std::memcpy(huge.data() + 18, &n, 8);
  expect_error(with_idx(huge), {bad + ".idx", "sequences"});
  // A pointer past the end of .bin: sequence 1 at byte 1000.
  std::string pointer = idx;
  int64_t p = 1000;
  std::memcpy(pointer.data() + kMegatronHeaderBytes + 2 * 4 + 8, &p, 8);
  expect_error(with_idx(pointer), {bad + ".bin", "sequence 1", "outside"});
  // doc_idx going backwards.
  std::string docs = idx;
  int64_t d = 5;
  std::memcpy(docs.data() + kMegatronHeaderBytes + 2 * 12, &d, 8);
  expect_error(with_idx(docs), {bad + ".idx", "doc_idx"});
  // A .bin shorter than the index says.
  write_all(bad + ".idx", idx);
  write_all(bad + ".bin", read_all(prefix + ".bin").substr(0, 12));
  expect_error([&] { MegatronDataset ds(bad, 100); }, {bad + ".bin", "sequence 1"});

  expect_error([&] { MegatronDataset ds(dir.prefix("absent"), 100); },
               {dir.prefix("absent") + ".idx", "cannot be opened"});
  std::filesystem::remove(bad + ".bin");
  expect_error([&] { MegatronDataset ds(bad, 100); }, {bad + ".bin", "cannot be opened"});
  expect_error([&] { MegatronDataset ds(prefix, 0); }, {"vocab size 0"});
}

TEST(IoMegatron, UnclosedLastDocumentAndEmptyFile) {
  TempDir dir;
  // doc_idx stops before the last sequence: the remainder counts as one more document.
  write_megatron(dir.prefix("open"), 4, {{1, 2}, {3}, {4, 5}}, {0, 1});
  MegatronDataset open(dir.prefix("open"), 10);
  EXPECT_EQ(open.doc_token_offsets(), (std::vector<int64_t>{0, 2, 5}));
  write_megatron(dir.prefix("empty"), 4, {}, {0});
  MegatronDataset empty(dir.prefix("empty"), 10);
  EXPECT_EQ(empty.num_tokens(), 0);
  EXPECT_EQ(empty.num_sequences(), 0);
}

}  // namespace
}  // namespace moerun::io
