// ByteTokenizer: lossless round trip of arbitrary bytes, EOD handling, bad ids rejected.
#include <gtest/gtest.h>

#include <random>

#include "io/byte_tokenizer.h"
#include "runtime/check.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

TEST(IoByteTokenizer, RoundTripsRandomBytes) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  for (int trial = 0; trial < 20; ++trial) {
    std::string text(gen() % 5000, '\0');
    for (auto& c : text) c = static_cast<char>(gen() & 0xff);
    auto ids = ByteTokenizer::encode(text);
    ASSERT_EQ(ids.size(), text.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_GE(ids[i], 0);
      ASSERT_LT(ids[i], 256);
      ASSERT_EQ(ids[i], static_cast<unsigned char>(text[i]));
    }
    EXPECT_EQ(ByteTokenizer::decode(ids), text);
  }
}

TEST(IoByteTokenizer, EveryByteValueAndEod) {
  std::string all(256, '\0');
  for (int i = 0; i < 256; ++i) all[i] = static_cast<char>(i);
  auto ids = ByteTokenizer::encode(all);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(ids[i], i);
  ids.push_back(ByteTokenizer::kEod);
  ByteTokenizer::encode_append("tail", ids);
  EXPECT_EQ(ByteTokenizer::decode(ids), all + "tail");
  EXPECT_EQ(ByteTokenizer::decode(ids, "<eod>"), all + "<eod>tail");
  EXPECT_EQ(ByteTokenizer::kVocabSize, 257);
}

TEST(IoByteTokenizer, RejectsIdsOutsideVocab) {
  std::vector<int32_t> bad = {65, 257};
  EXPECT_THROW(ByteTokenizer::decode(bad), moerun::Error);
  std::vector<int32_t> negative = {-1};
  EXPECT_THROW(ByteTokenizer::decode(negative), moerun::Error);
}

}  // namespace
}  // namespace moerun::io
