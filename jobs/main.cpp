// The moerun command line: `moerun <job> [options]`. Each job validates its options on every
// rank before the first collective and reports errors on rank 0 with a non-zero exit.
#include <boost/program_options/errors.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "comm/comm.h"
#include "jobs/jobs.h"
#include "runtime/blas.h"
#include "runtime/check.h"
#include "runtime/log.h"

#if defined(__SANITIZE_ADDRESS__)
// Open MPI leaks by design at exit; LeakSanitizer would fail every run (DESIGN.md, pitfalls).
// ASAN_OPTIONS from the environment still override this.
extern "C" const char* __asan_default_options() {
  return "detect_leaks=0";
}
#endif

namespace {
void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: moerun <job> [options]   (run under mpirun/srun for several ranks)\n"
      "jobs:\n"
      "  bench moe-layer   forward+backward of one expert-parallel MoE layer: tokens/s,\n"
      "                    expert GEMMs vs plain sgemm, dispatch+combine vs raw all-to-all\n"
      "  bench gemm        the sgemm peak of this machine (per rank)\n"
      "  bench checkpoint  save/load GB/s vs plain POSIX write+fsync/read of the same bytes\n"
      "  bench train       training tokens/s and MFU of a preset (--config "
      "jobs/presets/small.ini)\n"
      "  train             train a DeepSeekMoE language model (--config jobs/presets/tiny.ini)\n"
      "  prepare           text files (+ generated arithmetic) -> an HDF5 token dataset\n"
      "  convert           checkpoints <-> HuggingFace safetensors (--to hf, --from hf), --reshard "
      "copy\n"
      "  inspect CKPT_DIR  a checkpoint's step, layout, model, tensors; verifies checksums\n"
      "  plan              a training layout on paper: parameters, memory per rank, bytes per\n"
      "                    step, FLOPs, step time, MFU (--config, --nodes, --ep-size, --hardware)\n"
      "  generate          text from a checkpoint: prefill + token-by-token decode with a KV\n"
      "                    cache, greedy or sampled, experts sharded over the ranks\n"
      "  scale collect DIR a scaling study's runs -> one CSV and the scaling plots\n"
      "                    (slurm/scaling-study.sh runs the study)\n"
      "`moerun <job> --help` lists the job's options.\n"
      "options of every job:\n"
      "  --log-level L     debug|info|warning|error|off (default info)\n"
      "  --log-ranks R     0 (rank 0 only, default) or all: every rank logs; each line starts\n"
      "                    with [r<rank> <level>] either way\n");
}

// Takes --log-level / --log-ranks (either "--opt V" or "--opt=V") out of argv, for every job.
moerun::log::Options take_log_options(int& argc, char** argv) {
  moerun::log::Options opts;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    for (const char* name : {"--log-level", "--log-ranks"}) {
      const std::string n = name;
      std::string value;
      bool hit = false;
      if (a == n) {
        if (i + 1 >= argc)
          throw moerun::ConfigError(fmt::format("{} needs a value (see `moerun --help`)", n));
        value = argv[++i];
        hit = true;
      } else if (a.rfind(n + "=", 0) == 0) {
        value = a.substr(n.size() + 1);
        hit = true;
      }
      if (!hit) continue;
      if (n == "--log-level")
        opts.level = moerun::log::parse_level(value);
      else
        opts.ranks = moerun::log::parse_ranks(value);
      goto next;
    }
    argv[out++] = argv[i];
  next:;
  }
  argc = out;
  argv[argc] = nullptr;
  return opts;
}
}  // namespace

int main(int argc, char** argv) {
  moerun::select_blas_kernels(argv);  // may re-execute this program: before MPI_Init
  moerun::MpiSession mpi(&argc, &argv);
  const int rank = moerun::Comm::world().rank();
  moerun::log::init(rank, {});
  try {
    moerun::log::init(rank, take_log_options(argc, argv));
  } catch (const moerun::ConfigError& e) {
    if (rank == 0) moerun::log::error("moerun: error: {}", e.what());
    return 1;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    if (rank == 0) usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string job = argv[1];
  try {
    if (job == "bench") return moerun::run_bench(argc - 1, argv + 1);
    if (job == "prepare") return moerun::run_prepare(argc - 1, argv + 1);
    if (job == "train") return moerun::run_train(argc - 1, argv + 1);
    if (job == "convert") return moerun::run_convert(argc - 1, argv + 1);
    if (job == "inspect") return moerun::run_inspect(argc - 1, argv + 1);
    if (job == "scale") return moerun::run_scale(argc - 1, argv + 1);
    if (job == "plan") return moerun::run_plan(argc - 1, argv + 1);
    if (job == "generate") return moerun::run_generate(argc - 1, argv + 1);
    if (rank == 0) {
      moerun::log::error("moerun: unknown job '{}'", job);
      usage(stderr);
    }
    return 2;
  } catch (const boost::program_options::error& e) {
    // Every rank parsed the same command line: rank 0 speaks for all.
    moerun::log::error("moerun {}: error: {} (see `moerun {} --help`)", job, e.what(), job);
    return 1;
  } catch (const moerun::ConfigError& e) {
    // Every rank validated the same input before any collective: a clean exit everywhere.
    moerun::log::error("moerun {}: error: {}", job, e.what());
    return 1;
  } catch (const std::exception& e) {
    // A failure on some ranks only: the others may wait in a collective, so end the world.
    moerun::log::write_any_rank(
        moerun::log::Level::kError,
        fmt::format("moerun {}: fatal error on rank {}: {}", job, rank, e.what()));
    if (moerun::Comm::world().size() > 1) moerun::Comm::world().abort(1);
    return 1;
  }
}
