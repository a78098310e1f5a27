// prepare_dataset: two file domains plus arithmetic on a temp dir; every document comes back
// byte for byte in its domain, the split is deterministic, and bad inputs name themselves.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "io/prepare.h"
#include "io/token_dataset.h"
#include "runtime/check.h"
#include "tests/common/expect_error.h"
#include "tests/common/temp_dir.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

namespace fs = std::filesystem;

using ::moerun::testing::TempDir;

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

std::string random_text(std::mt19937_64& gen) {
  std::string s(1 + gen() % 400, '\0');
  for (auto& c : s) c = static_cast<char>(gen() & 0xff);  // any byte, including NUL and >= 128
  return s;
}

// All documents of a domain, in file order, train and validation together.
std::multiset<std::string> domain_docs(const TokenDatasetReader& r, int32_t domain) {
  std::multiset<std::string> out;
  for (Split split : {Split::kTrain, Split::kValidation})
    for (int64_t d = 0; d < r.num_docs(split); ++d) {
      if (r.doc_domain(split)[d] != domain) continue;
      auto ids = r.read_document(split, d);
      EXPECT_EQ(ids.back(), ByteTokenizer::kEod);
      ids.pop_back();
      out.insert(ByteTokenizer::decode(ids));
    }
  return out;
}

TEST(IoPrepare, TwoDomainsAndArithmetic) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  // code: .py files in nested directories, plus files the filter or the hidden rule must skip.
  std::multiset<std::string> code, prose;
  for (int i = 0; i < 23; ++i) {
    auto text = random_text(gen);
    write_text(dir.path / "code" / fmt::format("pkg{}", i % 3) / fmt::format("m{}.py", i), text);
    code.insert(text);
  }
  write_text(dir.path / "code" / "README.md", "not python");
  write_text(dir.path / "code" / ".git" / "hooks.py", "hidden");
  write_text(dir.path / "code" / "empty.py", "");
  // prose: one directory and one file given directly, merged into one domain.
  for (int i = 0; i < 7; ++i) {
    auto text = random_text(gen);
    write_text(dir.path / "prose" / fmt::format("p{}.txt", i), text);
    prose.insert(text);
  }
  const std::string single = random_text(gen);
  write_text(dir.path / "single.md", single);
  prose.insert(single);

  PrepareOptions o;
  o.inputs = {"code=" + (dir.path / "code").string(), "prose=" + (dir.path / "prose").string(),
              "prose=" + (dir.path / "single.md").string()};
  o.extensions = {"py", ".txt"};
  o.arithmetic_docs = 40;
  o.seed = seed;
  o.validation_fraction = 0.2;
  o.output = (dir.path / "out.h5").string();
  o.progress = Progress::kQuiet;
  auto summary = prepare_dataset(o);

  ASSERT_EQ(summary.domains.size(), 3u);
  EXPECT_EQ(summary.domains[0].name, "code");
  EXPECT_EQ(summary.domains[1].name, "prose");
  EXPECT_EQ(summary.domains[2].name, "arithmetic");
  EXPECT_EQ(summary.domains[0].train_docs + summary.domains[0].validation_docs, 23);
  EXPECT_EQ(summary.domains[0].skipped_empty, 1);
  EXPECT_EQ(summary.domains[1].train_docs + summary.domains[1].validation_docs, 8);
  EXPECT_EQ(summary.domains[2].train_docs + summary.domains[2].validation_docs, 40);
  for (const auto& d : summary.domains) {
    EXPECT_GE(d.validation_docs, 1) << d.name;
    EXPECT_GE(d.train_docs, 1) << d.name;
  }
  EXPECT_NE(summary.to_string().find("arithmetic"), std::string::npos);

  TokenDatasetReader reader(o.output);
  EXPECT_EQ(reader.meta().domains, (std::vector<std::string>{"code", "prose", "arithmetic"}));
  EXPECT_EQ(reader.meta().vocab_size, 257);
  EXPECT_EQ(reader.meta().tokenizer, "byte");
  EXPECT_EQ(reader.num_tokens(Split::kTrain) + reader.num_tokens(Split::kValidation),
            summary.total_tokens());
  EXPECT_EQ(domain_docs(reader, 0), code);
  EXPECT_EQ(domain_docs(reader, 1), prose);
  std::multiset<std::string> arithmetic;
  for (int64_t i = 0; i < 40; ++i) arithmetic.insert(arithmetic_document(seed, i));
  EXPECT_EQ(domain_docs(reader, 2), arithmetic);

  // Deterministic: a second run writes the same tokens and index.
  o.output = (dir.path / "again.h5").string();
  prepare_dataset(o);
  TokenDatasetReader again(o.output);
  for (Split split : {Split::kTrain, Split::kValidation}) {
    ASSERT_EQ(again.doc_offsets(split), reader.doc_offsets(split));
    EXPECT_EQ(again.doc_domain(split), reader.doc_domain(split));
    std::vector<int32_t> a(reader.num_tokens(split)), b(a.size());
    reader.read_tokens(split, 0, a);
    again.read_tokens(split, 0, b);
    EXPECT_EQ(a, b);
  }
}

TEST(IoPrepare, ArithmeticDocumentsAreCorrectSums) {
  const TestSeed seed = TestSeed::fresh();
  for (int64_t i = 0; i < 50; ++i) {
    const std::string doc = arithmetic_document(seed, i);
    EXPECT_EQ(doc, arithmetic_document(seed, i));
    std::istringstream lines(doc);
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
      ++n;
      long long a, b, c;
      char op, eq;
      std::istringstream in(line);
      ASSERT_TRUE(in >> a >> op >> b >> eq >> c) << line;
      EXPECT_EQ(eq, '=');
      EXPECT_EQ(c, op == '+' ? a + b : op == '-' ? a - b : a * b) << line;
    }
    EXPECT_GE(n, 4);
  }
}

TEST(IoPrepare, ValidationMaskRules) {
  const TestSeed seed = TestSeed::fresh();
  EXPECT_EQ(validation_mask(seed, 0, 1, 0.5), std::vector<bool>{false});
  for (int64_t n : {2, 3, 10}) {
    for (double f : {0.001, 0.5, 0.999}) {
      auto m = validation_mask(seed, 1, n, f);
      const auto val = std::count(m.begin(), m.end(), true);
      EXPECT_GE(val, 1);
      EXPECT_LE(val, n - 1);
    }
  }
  // Roughly the fraction on a large domain, and a prefix does not depend on what follows.
  auto big = validation_mask(seed, 2, 20000, 0.05);
  const auto val = std::count(big.begin(), big.end(), true);
  EXPECT_GT(val, 700);
  EXPECT_LT(val, 1300);
  auto small = validation_mask(seed, 2, 5000, 0.05);
  EXPECT_TRUE(std::equal(small.begin(), small.end(), big.begin()));
  const auto none = validation_mask(seed, 0, 10, 0.0);
  EXPECT_EQ(std::count(none.begin(), none.end(), true), 0);
}

using ::moerun::testing::expect_error;

TEST(IoPrepare, BadInputsNameThemselves) {
  TempDir dir;
  PrepareOptions o;
  o.output = (dir.path / "x.h5").string();
  o.progress = Progress::kQuiet;
  const std::string missing = (dir.path / "nowhere").string();
  o.inputs = {"web=" + missing};
  expect_error([&] { prepare_dataset(o); }, {missing, "does not exist"});
  EXPECT_FALSE(fs::exists(o.output));
  o.inputs = {"no-equals-sign"};
  expect_error([&] { prepare_dataset(o); }, {"no-equals-sign", "DOMAIN=PATH"});
  o.inputs = {"bad/name=" + dir.path.string()};
  expect_error([&] { prepare_dataset(o); }, {"bad/name"});
  write_text(dir.path / "src" / "a.txt", "text");
  o.inputs = {"code=" + (dir.path / "src").string()};
  o.extensions = {".py"};
  expect_error([&] { prepare_dataset(o); }, {"code", "no non-empty files"});
  o.inputs = {};
  expect_error([&] { prepare_dataset(o); }, {"nothing to prepare"});
  o.arithmetic_docs = 3;
  o.validation_fraction = 1.0;
  expect_error([&] { prepare_dataset(o); }, {"--validation-fraction"});
  o.validation_fraction = 0.5;
  o.inputs = {"arithmetic=" + (dir.path / "src").string()};
  expect_error([&] { prepare_dataset(o); }, {"arithmetic", "--arithmetic-docs"});
  o.inputs = {};
  o.output = "";
  expect_error([&] { prepare_dataset(o); }, {"--output"});
}

}  // namespace
}  // namespace moerun::io
