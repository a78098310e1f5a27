// `moerun generate`: text from a checkpoint, at any rank count. Every rank builds the model with
// its experts sharded over the EP group (= the world) and runs the same sequence: a prefill of
// the prompt through the attention caches, then one token at a time (Model::decode, a collective
// in each MoE block). Rank 0 samples each token with its own seed and broadcasts it, and streams
// the text to stdout; throughput and cache size go to stderr at the end.
#include <fmt/format.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "comm/topology.h"
#include "io/byte_tokenizer.h"
#include "io/checkpoint.h"
#include "io/checkpoint_manifest.h"
#include "io/checkpoint_stream.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/jobs.h"
#include "jobs/moe_options.h"
#include "layers/model.h"
#include "runtime/check.h"
#include "runtime/log.h"
#include "runtime/rng.h"

namespace moerun {

namespace po = boost::program_options;

namespace {

struct GenerateOptions {
  std::string ckpt_dir;
  std::optional<int64_t> step;
  std::optional<std::string> prompt;      // text (byte vocabulary)
  std::optional<std::string> prompt_ids;  // "1 2 3" or "1,2,3"
  int64_t max_new_tokens = 64;
  double temperature = 0.8;
  double top_p = 1.0;
  uint64_t seed = 1;
  std::string logits_out;
  bool no_cache = false;
};

// Only the byte vocabulary of `moerun prepare` has a text form here (no tokenizer files).
bool byte_vocabulary(const ModelConfig& m) {
  return m.vocab == io::ByteTokenizer::kVocabSize;
}

std::vector<int32_t> parse_ids(const std::string& text, int64_t vocab) {
  std::string s = text;
  std::replace(s.begin(), s.end(), ',', ' ');
  std::istringstream in(s);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOERUN_CONFIG_REQUIRE(used == word.size(), "--prompt-ids: '{}' is not an integer token id",
                          word);
    MOERUN_CONFIG_REQUIRE(v >= 0 && v < vocab,
                          "--prompt-ids: token {} is outside the model's vocabulary [0, {})", v,
                          vocab);
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// The prompt as token ids, checked against the model.
std::vector<int32_t> prompt_tokens(const GenerateOptions& o, const ModelConfig& m) {
  std::vector<int32_t> ids;
  if (o.prompt) {
    MOERUN_CONFIG_REQUIRE(byte_vocabulary(m),
                          "--prompt needs a model with the byte vocabulary of `moerun prepare` "
                          "({} ids); this model has {}: pass token ids with --prompt-ids",
                          io::ByteTokenizer::kVocabSize, m.vocab);
    ids = io::ByteTokenizer::encode(*o.prompt);
    MOERUN_CONFIG_REQUIRE(!ids.empty(), "--prompt is empty");
  } else {
    ids = parse_ids(*o.prompt_ids, m.vocab);
    MOERUN_CONFIG_REQUIRE(!ids.empty(), "--prompt-ids holds no token ids");
  }
  MOERUN_CONFIG_REQUIRE(static_cast<int64_t>(ids.size()) <= m.seq_len,
                        "{} is {} tokens, longer than the model's {} positions (seq_len)",
                        o.prompt ? "--prompt" : "--prompt-ids", ids.size(), m.seq_len);
  return ids;
}

// The newest committed step, or --step (which must be committed). Collective.
int64_t pick_step(const GenerateOptions& o, const Comm& world) {
  const std::vector<int64_t> steps = io::committed_steps(o.ckpt_dir, world);  // newest first
  if (steps.empty()) {
    const std::optional<std::string> why = io::checkpoint_dir_problem(o.ckpt_dir);
    MOERUN_CONFIG_REQUIRE(false, "--ckpt {}: {}", o.ckpt_dir,
                          why ? *why : std::string("no committed checkpoint"));
  }
  if (!o.step) return steps.front();
  MOERUN_CONFIG_REQUIRE(std::find(steps.begin(), steps.end(), *o.step) != steps.end(),
                        "--step {}: {} has no committed step {} (committed: {})", *o.step,
                        o.ckpt_dir, *o.step, fmt::join(steps, ", "));
  return *o.step;
}

// The parameters and router biases of the checkpoint into model: replicated tensors whole, each
// expert tensor's rows of this EP rank's experts (the checkpoint holds all E at any layout). One
// whole tensor in memory at a time.
void load_weights(const io::CheckpointReader& reader, Model& model, int ep_rank, int ep_size) {
  auto copy_rows = [](const Tensor& src, Tensor& dst, int64_t row_begin, const std::string& name) {
    MOERUN_CONFIG_REQUIRE(src.dtype() == DType::kF32, "checkpoint tensor \"{}\" is not f32", name);
    const int64_t row = dst.dim(0) > 0 ? dst.numel() / dst.dim(0) : 0;
    const float* from = src.f32() + row_begin * row;
    std::copy(from, from + dst.numel(), dst.f32());
  };
  for (const NamedParam& p : model.params()) {
    const Tensor x = reader.read(p.name);
    std::vector<int64_t> want = p.value->shape();
    if (p.is_expert) want[0] *= ep_size;
    MOERUN_CONFIG_REQUIRE(x.shape() == want, "checkpoint tensor \"{}\" is {}, the model needs {}",
                          p.name, x.shape_str(), fmt::format("({})", fmt::join(want, ", ")));
    copy_rows(x, *p.value, p.is_expert ? p.value->dim(0) * ep_rank : 0, p.name);
  }
  const std::vector<MoELayer*> moe = model.moe_layers();
  for (size_t l = 0; l < moe.size(); ++l) {
    const std::string name =
        router_bias_name(model.config().first_k_dense + static_cast<int64_t>(l));
    Tensor& bias = moe[l]->params().bias;
    if (reader.find(name) == nullptr) {  // a checkpoint trained without loss-free balancing
      bias.zero();
      continue;
    }
    const Tensor b = reader.read(name);
    MOERUN_CONFIG_REQUIRE(b.shape() == bias.shape(), "checkpoint tensor \"{}\" is {}, not {}", name,
                          b.shape_str(), bias.shape_str());
    copy_rows(b, bias, 0, name);
  }
}

// The next token from one row of logits: greedy at temperature 0, else a draw from
// softmax(logits / T) restricted to the smallest set of most likely tokens whose probability
// reaches top_p (nucleus sampling).
int32_t sample(std::span<const float> logits, double temperature, double top_p, Rng& rng) {
  const auto best = std::max_element(logits.begin(), logits.end());
  if (temperature == 0.0) return static_cast<int32_t>(best - logits.begin());
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((logits[i] - *best) / temperature);
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  double kept = 0.0;
  size_t n = 0;
  while (n < order.size() && (n == 0 || kept < top_p * total)) kept += p[order[n++]];
  double u = rng.uniform() * kept;
  for (size_t i = 0; i < n; ++i) {
    u -= p[order[i]];
    if (u < 0.0) return order[i];
  }
  return order[n - 1];
}

// Writes byte tokens to stdout as UTF-8 as they come: a multi-byte character once complete, an
// invalid byte as U+FFFD, so the stream stays valid UTF-8 whatever the model emits.
class Utf8Stream {
 public:
  void put(uint8_t b) {
    if (need_ > 0 && b >= lo_ && b <= hi_) {
      pending_.push_back(static_cast<char>(b));
      lo_ = 0x80;
      hi_ = 0xBF;
      if (--need_ == 0) flush_pending();
      return;
    }
    if (need_ > 0) replace_pending();
    if (b < 0x80) {
      std::fputc(b, stdout);
    } else if (b >= 0xC2 && b <= 0xF4) {
      need_ = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
      pending_.assign(1, static_cast<char>(b));
      // The second byte's range rules out overlong forms, surrogates and code points > U+10FFFF.
      lo_ = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
      hi_ = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
    } else {
      std::fputs(kReplacement, stdout);
    }
    std::fflush(stdout);
  }
  void finish() {
    if (need_ > 0) replace_pending();
    std::fflush(stdout);
  }

 private:
  static constexpr const char* kReplacement = "\xEF\xBF\xBD";
  void flush_pending() {
    std::fwrite(pending_.data(), 1, pending_.size(), stdout);
    pending_.clear();
    std::fflush(stdout);
  }
  void replace_pending() {
    std::fputs(kReplacement, stdout);
    pending_.clear();
    need_ = 0;
  }
  std::string pending_;
  int need_ = 0;
  uint8_t lo_ = 0x80, hi_ = 0xBF;  // the next continuation byte's allowed range
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int generate(const GenerateOptions& o) {
  const Comm world = Comm::world();
  const bool root = world.rank() == 0;
  const int64_t step = pick_step(o, world);
  std::optional<io::CheckpointReader> reader;
  ModelConfig mc;
  std::vector<int32_t> tokens;
  Topology topo = Topology::create(world.size());  // experts sharded over the whole world
  // Every rank opens the checkpoint and checks the prompt against the model; every rank learns
  // the first failure (a clean exit everywhere, no rank waiting in a collective).
  on_every_rank(world, "generate", [&] {
    reader.emplace(io::CheckpointReader::open(o.ckpt_dir, step));
    mc = model_from_meta(reader->manifest().meta, io::step_dir(o.ckpt_dir, step));
    mc.recompute = Recompute::kNone;
    set_node_map(mc.moe, topo);
    tokens = prompt_tokens(o, mc);
    mc.validate(world.size());  // before the model's constructor talks to the other ranks
  });
  Model model(mc, topo.ep);
  on_every_rank(world, "generate",
                [&] { load_weights(*reader, model, topo.ep.rank(), topo.ep.size()); });
  reader.reset();

  const int64_t P = static_cast<int64_t>(tokens.size());
  // The last new token is never decoded, so P + n - 1 positions must fit.
  int64_t max_new = o.max_new_tokens;
  if (P + max_new - 1 > mc.seq_len) {
    max_new = mc.seq_len - P + 1;
    if (root)
      log::warn(
          "moerun generate: --max-new-tokens {} stops at {}: the prompt's {} tokens and "
          "the new ones must fit the model's {} positions",
          o.max_new_tokens, max_new, P, mc.seq_len);
  }
  const bool bytes = byte_vocabulary(mc);
  if (root)
    log::info(
        "moerun generate: step {} of {}: {} layers, hidden {}, vocab {}, {} attention, {} "
        "rank(s); prompt {} tokens, up to {} new ({}, {})",
        step, o.ckpt_dir, mc.layers, mc.hidden, mc.vocab, to_string(mc.attention), world.size(), P,
        max_new,
        o.temperature == 0
            ? std::string("greedy")
            : fmt::format("temperature {} top-p {} seed {}", o.temperature, o.top_p, o.seed),
        o.no_cache ? "no cache: every token recomputes the whole sequence" : "KV cache");

  FILE* logits_file = nullptr;
  if (root && !o.logits_out.empty()) logits_file = std::fopen(o.logits_out.c_str(), "w");
  on_rank0(world, "generate", [&] {
    MOERUN_CONFIG_REQUIRE(o.logits_out.empty() || logits_file != nullptr,
                          "--logits-out {}: cannot write the file", o.logits_out);
  });

  Rng rng(o.seed, 0);
  Utf8Stream text;
  std::vector<int32_t> seq = tokens;
  int64_t cache_bytes = 0, generated = 0;
  double prefill_s = 0.0, decode_s = 0.0;
  auto logits_of = [&](int64_t pos, int64_t t) {
    const Tensor in = Tensor::from_host(std::span<const int32_t>(seq).subspan(pos, t), {1, t});
    return model.decode(in, pos);
  };
  for (int64_t i = 0; i < max_new; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t len = static_cast<int64_t>(seq.size());
    Tensor logits;
    if (o.no_cache) {
      model.start_cache(1, len);
      logits = logits_of(0, len);
    } else if (i == 0) {
      model.start_cache(1, std::min(mc.seq_len, P + max_new - 1));
      logits = logits_of(0, P);
    } else {
      logits = logits_of(len - 1, 1);
    }
    cache_bytes = std::max(cache_bytes, model.cache_bytes());
    const std::span<const float> last =
        logits.span<float>().subspan(static_cast<size_t>((logits.dim(0) - 1) * mc.vocab));
    int32_t next = 0;
    if (root) {
      next = sample(last, o.temperature, o.top_p, rng);
      if (logits_file) {
        for (size_t v = 0; v < last.size(); ++v)
          std::fprintf(logits_file, v ? " %.9g" : "%.9g", static_cast<double>(last[v]));
        std::fputc('\n', logits_file);
      }
    }
    world.broadcast(std::as_writable_bytes(std::span<int32_t>(&next, 1)), 0);
    (i == 0 ? prefill_s : decode_s) += seconds_since(t0);
    ++generated;
    if (bytes && next == io::ByteTokenizer::kEod) break;  // the end of a document
    seq.push_back(next);
    if (!root) continue;
    if (bytes) {
      text.put(static_cast<uint8_t>(next));
    } else {
      std::printf(i ? " %d" : "%d", next);
      std::fflush(stdout);
    }
  }
  if (root) {
    text.finish();
    std::printf("\n");
    std::fflush(stdout);
    if (logits_file) std::fclose(logits_file);
    const int64_t decoded = generated - 1;  // tokens after the first, which the prefill gave
    log::info(
        "moerun generate: prefill {} tokens in {:.3f} s ({:.1f} tokens/s); {} more tokens "
        "in {:.3f} s ({:.1f} tokens/s{}); {} cache {:.1f} KiB per rank",
        P, prefill_s, static_cast<double>(P) / std::max(prefill_s, 1e-12), decoded, decode_s,
        decoded > 0 ? static_cast<double>(decoded) / decode_s : 0.0, o.no_cache ? ", no cache" : "",
        o.no_cache ? "largest recompute" : "KV", static_cast<double>(cache_bytes) / 1024.0);
    if (generated < max_new && bytes)
      log::info("moerun generate: stopped at the end-of-document token after {} tokens", generated);
  }
  return 0;
}

}  // namespace

int run_generate(int argc, char** argv) {
  const Comm world = Comm::world();
  po::options_description desc(
      "moerun generate: text from a checkpoint (prefill, then token by token through the KV\n"
      "caches); runs at any rank count with the experts sharded over the ranks; the new text\n"
      "streams to stdout, throughput and cache size go to stderr\n"
      "  moerun generate --ckpt DIR (--prompt TEXT | --prompt-ids \"1 2 3\") [options]");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("ckpt", po::value<std::string>(), "the checkpoint directory (of `moerun train` or convert)");
  add("step", po::value<int64_t>(), "the step to load (default: the newest committed one)");
  add("prompt", po::value<std::string>(),
      "the prompt as text, one token per byte (models with the byte vocabulary of `moerun "
      "prepare`, 257 ids); the continuation is printed as UTF-8 and stops at end-of-document");
  add("prompt-ids", po::value<std::string>(),
      "the prompt as token ids separated by spaces or commas (any vocabulary); the continuation "
      "is printed as ids unless the vocabulary is bytes");
  add("max-new-tokens", po::value<int64_t>()->default_value(64),
      "tokens to generate at most (fewer when the model's seq_len positions run out)");
  add("temperature", po::value<double>()->default_value(0.8),
      "sampling temperature; 0 = greedy (the most likely token every time)");
  add("top-p", po::value<double>()->default_value(1.0),
      "nucleus sampling: draw from the most likely tokens whose probability sums to P, in (0, 1]");
  add("seed", po::value<uint64_t>()->default_value(1),
      "seed of the sampler (rank 0 draws and broadcasts each token)");
  add("logits-out", po::value<std::string>(),
      "write each step's logits (the row the token was drawn from) to FILE, one line per token");
  add("no-cache",
      "recompute the whole sequence for every token instead of using the KV cache "
      "(the same tokens, slower: for measuring the cache)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (world.rank() == 0) std::cout << desc << "\n";
    return 0;
  }
  GenerateOptions o;
  MOERUN_CONFIG_REQUIRE(vm.count("ckpt"), "--ckpt DIR is required (a checkpoint directory)");
  o.ckpt_dir = vm["ckpt"].as<std::string>();
  if (vm.count("step")) {
    o.step = vm["step"].as<int64_t>();
    MOERUN_CONFIG_REQUIRE(*o.step >= 0, "--step {} is negative", *o.step);
  }
  MOERUN_CONFIG_REQUIRE(vm.count("prompt") + vm.count("prompt-ids") == 1,
                        "give exactly one of --prompt TEXT and --prompt-ids \"ID ID ...\"");
  if (vm.count("prompt")) o.prompt = vm["prompt"].as<std::string>();
  if (vm.count("prompt-ids")) o.prompt_ids = vm["prompt-ids"].as<std::string>();
  o.max_new_tokens = vm["max-new-tokens"].as<int64_t>();
  MOERUN_CONFIG_REQUIRE(o.max_new_tokens > 0, "--max-new-tokens must be > 0 (got {})",
                        o.max_new_tokens);
  o.temperature = vm["temperature"].as<double>();
  MOERUN_CONFIG_REQUIRE(std::isfinite(o.temperature) && o.temperature >= 0,
                        "--temperature must be >= 0 (0 = greedy; got {})", o.temperature);
  o.top_p = vm["top-p"].as<double>();
  MOERUN_CONFIG_REQUIRE(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1] (got {})", o.top_p);
  o.seed = vm["seed"].as<uint64_t>();
  if (vm.count("logits-out")) o.logits_out = vm["logits-out"].as<std::string>();
  o.no_cache = vm.count("no-cache") > 0;
  return generate(o);
}

}  // namespace moerun
