// moerun HDF5 token dataset: write/read round trip of random documents, and the errors a bad
// file must give (each naming the file).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "io/h5_util.h"
#include "io/token_dataset.h"
#include "tests/common/expect_error.h"
#include "tests/common/temp_dir.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

namespace fs = std::filesystem;

using ::moerun::testing::TempDir;

struct Doc {
  Split split;
  int32_t domain;
  std::vector<int32_t> tokens;
};

std::vector<Doc> random_docs(std::mt19937_64& gen, int n, int32_t vocab, int32_t eod, int domains,
                             int max_len) {
  std::vector<Doc> docs;
  for (int i = 0; i < n; ++i) {
    Doc d{gen() % 4 == 0 ? Split::kValidation : Split::kTrain,
          static_cast<int32_t>(gen() % domains),
          {}};
    const int len = static_cast<int>(gen() % max_len);
    for (int t = 0; t < len; ++t) d.tokens.push_back(static_cast<int32_t>(gen() % vocab));
    d.tokens.push_back(eod);
    docs.push_back(std::move(d));
  }
  return docs;
}

void write_docs(const std::string& path, const TokenDatasetMeta& meta, const std::vector<Doc>& docs,
                Compression compression = Compression::kDeflate) {
  TokenDatasetWriter writer(path, meta, compression);
  for (const auto& d : docs) writer.add_document(d.split, d.domain, d.tokens);
  writer.close();
}

void check_round_trip(const std::string& path, const TokenDatasetMeta& meta,
                      const std::vector<Doc>& docs, std::mt19937_64& gen) {
  TokenDatasetReader reader(path);
  EXPECT_EQ(reader.meta().vocab_size, meta.vocab_size);
  EXPECT_EQ(reader.meta().eod_id, meta.eod_id);
  EXPECT_EQ(reader.meta().domains, meta.domains);
  EXPECT_EQ(reader.meta().tokenizer, meta.tokenizer);
  for (Split split : {Split::kTrain, Split::kValidation}) {
    std::vector<int32_t> stream, domains;
    std::vector<int64_t> offsets{0};
    for (const auto& d : docs) {
      if (d.split != split) continue;
      stream.insert(stream.end(), d.tokens.begin(), d.tokens.end());
      offsets.push_back(static_cast<int64_t>(stream.size()));
      domains.push_back(d.domain);
    }
    ASSERT_EQ(reader.num_tokens(split), static_cast<int64_t>(stream.size()));
    ASSERT_EQ(reader.num_docs(split), static_cast<int64_t>(domains.size()));
    EXPECT_EQ(reader.doc_offsets(split), offsets);
    EXPECT_EQ(reader.doc_domain(split), domains);
    // Whole stream, then random slices, against the input (output poisoned first).
    std::vector<int32_t> all(stream.size(), -7);
    reader.read_tokens(split, 0, all);
    EXPECT_EQ(all, stream);
    for (int trial = 0; trial < 50 && !stream.empty(); ++trial) {
      const int64_t begin = static_cast<int64_t>(gen() % stream.size());
      const int64_t count = static_cast<int64_t>(gen() % (stream.size() - begin + 1));
      std::vector<int32_t> slice(count, -7);
      reader.read_tokens(split, begin, slice);
      ASSERT_TRUE(std::equal(slice.begin(), slice.end(), stream.begin() + begin));
    }
    for (int64_t d = 0; d < reader.num_docs(split); ++d) {
      auto doc = reader.read_document(split, d);
      ASSERT_TRUE(std::equal(doc.begin(), doc.end(), stream.begin() + offsets[d]));
      ASSERT_EQ(static_cast<int64_t>(doc.size()), offsets[d + 1] - offsets[d]);
    }
    std::vector<int32_t> past(2);
    EXPECT_THROW(reader.read_tokens(split, reader.num_tokens(split) - 1, past), Error);
  }
}

TEST(IoTokenDataset, RoundTripRandomDocuments) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  TokenDatasetMeta meta{1000, 999, "test", {"code", "math", "prose"}};
  auto docs = random_docs(gen, 200, meta.vocab_size, meta.eod_id, 3, 300);
  for (auto compression : {Compression::kDeflate, Compression::kNone}) {
    const std::string path = dir.file("tokens.h5");
    write_docs(path, meta, docs, compression);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    check_round_trip(path, meta, docs, gen);
  }
}

// More tokens than the writer buffers at once, so appends to the extendible dataset are tested.
TEST(IoTokenDataset, RoundTripAcrossWriterFlushes) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  TokenDatasetMeta meta;
  meta.domains = {"only"};
  auto docs = random_docs(gen, 60, meta.vocab_size, meta.eod_id, 1, 180000);
  write_docs(dir.file("big.h5"), meta, docs, Compression::kNone);
  check_round_trip(dir.file("big.h5"), meta, docs, gen);
}

TEST(IoTokenDataset, EmptySplitAndUnclosedWriterLeavesNoFile) {
  TempDir dir;
  TokenDatasetMeta meta;
  meta.domains = {"a"};
  {
    TokenDatasetWriter writer(dir.file("partial.h5"), meta);
    std::vector<int32_t> doc = {1, 2, ByteTokenizer::kEod};
    writer.add_document(Split::kTrain, 0, doc);
  }  // destroyed without close(): a crash mid-prepare
  EXPECT_FALSE(fs::exists(dir.file("partial.h5")));
  EXPECT_FALSE(fs::exists(dir.file("partial.h5.tmp")));

  std::vector<Doc> docs = {{Split::kTrain, 0, {5, 6, 7, ByteTokenizer::kEod}}};
  write_docs(dir.file("one.h5"), meta, docs);
  TokenDatasetReader reader(dir.file("one.h5"));
  EXPECT_EQ(reader.num_tokens(Split::kValidation), 0);
  EXPECT_EQ(reader.num_docs(Split::kValidation), 0);
  EXPECT_EQ(reader.read_document(Split::kTrain, 0), docs[0].tokens);
}

TEST(IoTokenDataset, WriterRejectsBadDocuments) {
  TempDir dir;
  TokenDatasetMeta meta;
  meta.domains = {"a"};
  TokenDatasetWriter writer(dir.file("w.h5"), meta);
  std::vector<int32_t> no_eod = {1, 2};
  std::vector<int32_t> too_big = {300, ByteTokenizer::kEod};
  std::vector<int32_t> ok = {1, ByteTokenizer::kEod};
  EXPECT_THROW(writer.add_document(Split::kTrain, 0, no_eod), Error);
  EXPECT_THROW(writer.add_document(Split::kTrain, 0, too_big), Error);
  EXPECT_THROW(writer.add_document(Split::kTrain, 1, ok), Error);
  TokenDatasetMeta no_domains;
  EXPECT_THROW(TokenDatasetWriter(dir.file("x.h5"), no_domains), Error);
}

// Expects `fn` to throw moerun::Error whose message contains every piece.
using ::moerun::testing::expect_error;

// A valid file to damage: open read-write with the raw API.
std::string valid_file(const TempDir& dir, const std::string& name) {
  TokenDatasetMeta meta;
  meta.domains = {"a", "b"};
  std::vector<Doc> docs = {{Split::kTrain, 0, {10, 11, 12, ByteTokenizer::kEod}},
                           {Split::kTrain, 1, {13, ByteTokenizer::kEod}},
                           {Split::kValidation, 1, {14, 15, ByteTokenizer::kEod}}};
  write_docs(dir.file(name), meta, docs);
  return dir.file(name);
}

TEST(IoTokenDataset, ErrorsNameTheFile) {
  TempDir dir;
  const std::string missing = dir.file("missing.h5");
  expect_error([&] { TokenDatasetReader r(missing); }, {missing, "does not exist"});

  const std::string text = dir.file("text.h5");
  std::ofstream(text) << "this is not an HDF5 file\n";
  expect_error([&] { TokenDatasetReader r(text); }, {text, "not an HDF5 file"});

  expect_error([&] { TokenDatasetReader r(dir.path.string()); }, {"is a directory"});

  const std::string no_dataset = valid_file(dir, "no_dataset.h5");
  {
    H5Id f(H5_CHECK(H5Fopen(no_dataset.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)));
    H5_CHECK(H5Ldelete(f, "/validation/doc_domain", H5P_DEFAULT));
  }
  expect_error([&] { TokenDatasetReader r(no_dataset); }, {no_dataset, "/validation/doc_domain"});

  const std::string bad_format = valid_file(dir, "bad_format.h5");
  {
    H5Id f(H5_CHECK(H5Fopen(bad_format.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)));
    h5_write_attr(f, "format", std::string("something-else"));
  }
  expect_error([&] { TokenDatasetReader r(bad_format); }, {bad_format, "something-else"});

  const std::string bad_version = valid_file(dir, "bad_version.h5");
  {
    H5Id f(H5_CHECK(H5Fopen(bad_version.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)));
    h5_write_attr(f, "version", int64_t{7});
  }
  expect_error([&] { TokenDatasetReader r(bad_version); }, {bad_version, "version 7"});

  // An id beyond the vocabulary, written behind the writer's back.
  const std::string bad_id = valid_file(dir, "bad_id.h5");
  {
    H5Id f(H5_CHECK(H5Fopen(bad_id.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)));
    H5Id d(H5_CHECK(H5Dopen2(f, "/train/tokens", H5P_DEFAULT)));
    H5Id space(H5_CHECK(H5Dget_space(d)));
    hsize_t start[1] = {1}, count[1] = {1};
    H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr));
    H5Id mem(H5_CHECK(H5Screate_simple(1, count, nullptr)));
    int32_t value = 300;
    H5_CHECK(H5Dwrite(d, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, &value));
  }
  TokenDatasetReader reader(bad_id);
  std::vector<int32_t> out(4);
  expect_error([&] { reader.read_tokens(Split::kTrain, 0, out); },
               {bad_id, "300", "vocab_size 257", "/train/tokens[1]"});
  std::vector<int32_t> fine(2);
  EXPECT_NO_THROW(reader.read_tokens(Split::kTrain, 2, fine));
}

TEST(IoTokenDataset, SplitNames) {
  EXPECT_EQ(parse_split("train"), Split::kTrain);
  EXPECT_EQ(parse_split(to_string(Split::kValidation)), Split::kValidation);
  EXPECT_THROW(parse_split("test"), Error);
}

}  // namespace
}  // namespace moerun::io
