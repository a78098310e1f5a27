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
      "`moerun <job> --help` lists the job's options.\n");
}
}  // namespace

int main(int argc, char** argv) {
  moerun::select_blas_kernels(argv);  // may re-execute this program: before MPI_Init
  moerun::MpiSession mpi(&argc, &argv);
  const int rank = moerun::Comm::world().rank();
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
    if (rank == 0) {
      std::fprintf(stderr, "moerun: unknown job '%s'\n", job.c_str());
      usage(stderr);
    }
    return 2;
  } catch (const boost::program_options::error& e) {
    // Every rank parsed the same command line: rank 0 speaks for all.
    if (rank == 0)
      std::fprintf(stderr, "moerun %s: error: %s (see `moerun %s --help`)\n", job.c_str(), e.what(),
                   job.c_str());
    return 1;
  } catch (const moerun::ConfigError& e) {
    // Every rank validated the same input before any collective: a clean exit everywhere.
    if (rank == 0) std::fprintf(stderr, "moerun %s: error: %s\n", job.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    // A failure on some ranks only: the others may wait in a collective, so end the world.
    std::fprintf(stderr, "moerun %s: fatal error on rank %d: %s\n", job.c_str(), rank, e.what());
    std::fflush(stderr);
    if (moerun::Comm::world().size() > 1) moerun::Comm::world().abort(1);
    return 1;
  }
}
