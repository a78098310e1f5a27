// prepare_dataset: collect files per domain, tokenise bytes, split deterministically, write HDF5.
#include "io/prepare.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "io/byte_tokenizer.h"
#include "io/token_dataset.h"
#include "runtime/check.h"
#include "runtime/log.h"
#include "runtime/rng.h"

namespace moerun::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kArithmeticDomain = "arithmetic";
// Stream salts: the arithmetic content and the split draw from different streams of one seed.
constexpr uint64_t kArithmeticSalt = 0xa217'4e71'c0de'0001ULL;
constexpr uint64_t kSplitSalt = 0x5b11'7000'c0de'0002ULL;
constexpr int64_t kProgressEvery = 2000;

struct DomainInput {
  std::string name;
  std::vector<fs::path> files;  // non-empty files, in reading order
  int64_t skipped_empty = 0;
};

bool valid_domain_name(const std::string& name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}

std::string normalise_extension(const std::string& ext) {
  return ext.empty() || ext.front() == '.' ? ext : "." + ext;
}

// The files of one PATH, sorted by path so the dataset does not depend on directory order.
void collect_files(const std::string& spec, const fs::path& root,
                   const std::vector<std::string>& extensions, DomainInput& domain) {
  std::error_code ec;
  auto status = fs::status(root, ec);
  MOERUN_CONFIG_REQUIRE(fs::exists(status), "--input '{}': path '{}' does not exist", spec,
                        root.string());
  std::vector<fs::path> found;
  auto take = [&](const fs::path& p) {
    if (fs::file_size(p) == 0) {
      ++domain.skipped_empty;
      return;
    }
    found.push_back(p);
  };
  if (!fs::is_directory(status)) {
    MOERUN_CONFIG_REQUIRE(fs::is_regular_file(status), "--input '{}': '{}' is not a regular file",
                          spec, root.string());
    take(root);
  } else {
    try {
      for (auto it = fs::recursive_directory_iterator(root);
           it != fs::recursive_directory_iterator(); ++it) {
        const auto name = it->path().filename().string();
        // Hidden entries (.git, .cache, editor files) are tooling, not corpus.
        if (!name.empty() && name.front() == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file()) continue;
        if (!extensions.empty() && std::find(extensions.begin(), extensions.end(),
                                             it->path().extension().string()) == extensions.end())
          continue;
        take(it->path());
      }
    } catch (const fs::filesystem_error& e) {
      throw Error(fmt::format("--input '{}': cannot read directory '{}': {}", spec, root.string(),
                              e.what()));
    }
    std::sort(found.begin(), found.end(), [](const fs::path& a, const fs::path& b) {
      return a.generic_string() < b.generic_string();
    });
  }
  domain.files.insert(domain.files.end(), found.begin(), found.end());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  MOERUN_CONFIG_REQUIRE(in.good(), "cannot open '{}'", path.string());
  std::string text;
  in.seekg(0, std::ios::end);
  text.resize(static_cast<size_t>(in.tellg()));
  in.seekg(0, std::ios::beg);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  MOERUN_CONFIG_REQUIRE(in.good() || in.eof(), "cannot read '{}'", path.string());
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

// A uniform integer in [0, bound).
int64_t below(Rng& rng, int64_t bound) {
  return static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(bound));
}

}  // namespace

void PrepareOptions::validate() const {
  MOERUN_CONFIG_REQUIRE(!output.empty(), "--output is required (the .h5 file to write)");
  MOERUN_CONFIG_REQUIRE(!inputs.empty() || arithmetic_docs > 0,
                        "nothing to prepare: give --input DOMAIN=PATH or --arithmetic-docs N");
  MOERUN_CONFIG_REQUIRE(arithmetic_docs >= 0, "--arithmetic-docs must not be negative (got {})",
                        arithmetic_docs);
  MOERUN_CONFIG_REQUIRE(validation_fraction >= 0.0 && validation_fraction < 1.0,
                        "--validation-fraction must lie in [0, 1) (got {})", validation_fraction);
  for (const auto& spec : inputs) {
    const auto eq = spec.find('=');
    MOERUN_CONFIG_REQUIRE(eq != std::string::npos && eq + 1 < spec.size(),
                          "--input '{}' must have the form DOMAIN=PATH", spec);
    const std::string name = spec.substr(0, eq);
    MOERUN_CONFIG_REQUIRE(valid_domain_name(name),
                          "--input '{}': domain name '{}' must be letters, digits, '_', '-', '.'",
                          spec, name);
    MOERUN_CONFIG_REQUIRE(arithmetic_docs == 0 || name != kArithmeticDomain,
                          "--input '{}': domain '{}' is taken by --arithmetic-docs", spec, name);
  }
}

int64_t PrepareSummary::total_tokens() const {
  int64_t n = 0;
  for (const auto& d : domains) n += d.train_tokens + d.validation_tokens;
  return n;
}

std::string PrepareSummary::to_string() const {
  std::string out =
      fmt::format("wrote {}\n{:<16} {:>10} {:>14} {:>10} {:>14} {:>8}\n", output, "domain",
                  "train docs", "train tokens", "val docs", "val tokens", "empty");
  DomainSummary total{"total"};
  for (const auto& d : domains) {
    out += fmt::format("{:<16} {:>10} {:>14} {:>10} {:>14} {:>8}\n", d.name, d.train_docs,
                       d.train_tokens, d.validation_docs, d.validation_tokens, d.skipped_empty);
    total.train_docs += d.train_docs;
    total.train_tokens += d.train_tokens;
    total.validation_docs += d.validation_docs;
    total.validation_tokens += d.validation_tokens;
    total.skipped_empty += d.skipped_empty;
  }
  out += fmt::format("{:<16} {:>10} {:>14} {:>10} {:>14} {:>8}\n", total.name, total.train_docs,
                     total.train_tokens, total.validation_docs, total.validation_tokens,
                     total.skipped_empty);
  return out;
}

std::string arithmetic_document(uint64_t seed, int64_t index) {
  Rng rng(seed ^ kArithmeticSalt, static_cast<uint64_t>(index));
  static constexpr int64_t kPow10[] = {1, 10, 100, 1000};
  std::string doc;
  const int64_t lines = 4 + below(rng, 13);
  for (int64_t i = 0; i < lines; ++i) {
    const int64_t op = below(rng, 3);
    // Products of up to two-digit numbers; sums and differences of up to three digits.
    const int64_t max_digits = op == 2 ? 2 : 3;
    const int64_t a = below(rng, kPow10[1 + below(rng, max_digits)]);
    const int64_t b = below(rng, kPow10[1 + below(rng, max_digits)]);
    const char sym = "+-*"[op];
    const int64_t c = op == 0 ? a + b : op == 1 ? a - b : a * b;
    doc += fmt::format("{}{}{}={}\n", a, sym, b, c);
  }
  return doc;
}

std::vector<bool> validation_mask(uint64_t seed, int64_t domain, int64_t n_docs, double fraction) {
  // One counter-based draw per document index: the split of a document never depends on how
  // many documents follow it, only the fix-ups below do.
  Rng rng(seed ^ kSplitSalt, static_cast<uint64_t>(domain));
  std::vector<double> u(static_cast<size_t>(n_docs));
  for (auto& x : u) x = rng.uniform();
  std::vector<bool> val(u.size());
  for (size_t i = 0; i < u.size(); ++i) val[i] = u[i] < fraction;
  if (n_docs == 0) return val;
  const bool any_train = std::find(val.begin(), val.end(), false) != val.end();
  if (!any_train) val[std::max_element(u.begin(), u.end()) - u.begin()] = false;
  const bool any_val = std::find(val.begin(), val.end(), true) != val.end();
  if (n_docs >= 2 && !any_val && fraction > 0.0)
    val[std::min_element(u.begin(), u.end()) - u.begin()] = true;
  return val;
}

PrepareSummary prepare_dataset(const PrepareOptions& options) {
  options.validate();
  std::vector<std::string> extensions;
  for (const auto& e : options.extensions) extensions.push_back(normalise_extension(e));

  // Pass 1: the file lists, so every domain's document count is known before the split.
  std::vector<DomainInput> domains;
  std::map<std::string, size_t> domain_id;
  for (const auto& spec : options.inputs) {
    const auto eq = spec.find('=');
    const std::string name = spec.substr(0, eq);
    auto [it, inserted] = domain_id.emplace(name, domains.size());
    if (inserted) domains.push_back({name, {}, 0});
    collect_files(spec, spec.substr(eq + 1), extensions, domains[it->second]);
  }
  for (const auto& d : domains)
    MOERUN_CONFIG_REQUIRE(
        !d.files.empty(),
        "--input domain '{}' has no non-empty files{}; check the paths and --extensions", d.name,
        extensions.empty() ? "" : " with the given extensions");
  const bool arithmetic = options.arithmetic_docs > 0;
  if (arithmetic) domains.push_back({kArithmeticDomain, {}, 0});

  TokenDatasetMeta meta;
  for (const auto& d : domains) meta.domains.push_back(d.name);
  TokenDatasetWriter writer(options.output, meta);

  PrepareSummary summary;
  summary.output = options.output;
  int64_t total_files = 0, files_done = 0, bytes_done = 0;
  for (const auto& d : domains) total_files += static_cast<int64_t>(d.files.size());
  std::vector<int32_t> tokens;
  auto add = [&](DomainSummary& s, int32_t domain, bool validation, std::string_view text) {
    tokens.clear();
    ByteTokenizer::encode_append(text, tokens);
    tokens.push_back(ByteTokenizer::kEod);
    const Split split = validation ? Split::kValidation : Split::kTrain;
    writer.add_document(split, domain, tokens);
    auto n = static_cast<int64_t>(tokens.size());
    (validation ? s.validation_docs : s.train_docs) += 1;
    (validation ? s.validation_tokens : s.train_tokens) += n;
  };

  // Pass 2: read, tokenise and write, domain by domain.
  for (size_t di = 0; di < domains.size(); ++di) {
    const auto& d = domains[di];
    const auto domain = static_cast<int32_t>(di);
    DomainSummary s{d.name};
    s.skipped_empty = d.skipped_empty;
    const bool is_arithmetic = arithmetic && di + 1 == domains.size();
    const int64_t n =
        is_arithmetic ? options.arithmetic_docs : static_cast<int64_t>(d.files.size());
    const auto val = validation_mask(options.seed, domain, n, options.validation_fraction);
    for (int64_t i = 0; i < n; ++i) {
      if (is_arithmetic) {
        add(s, domain, val[static_cast<size_t>(i)], arithmetic_document(options.seed, i));
        continue;
      }
      const std::string text = read_file(d.files[static_cast<size_t>(i)]);
      add(s, domain, val[static_cast<size_t>(i)], text);
      bytes_done += static_cast<int64_t>(text.size());
      if (++files_done % kProgressEvery == 0 && options.progress == Progress::kStderr)
        log::info("moerun prepare: {}/{} files, {:.1f} MB", files_done, total_files,
                  static_cast<double>(bytes_done) / 1e6);
    }
    summary.domains.push_back(s);
  }
  writer.close();
  return summary;
}

}  // namespace moerun::io
