// OpenBLAS binding: checks the int range that cblas takes, skips empty products.
#include "runtime/blas.h"

#include <cblas.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>

#include "runtime/check.h"
#include "runtime/log.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"
#include "runtime/timer.h"

namespace moerun {

void sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  MOERUN_REQUIRE(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
                     ldc <= INT_MAX,
                 "GEMM dimension beyond the BLAS int range (M={}, N={}, K={})", M, N, K);
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta == Trans::kYes ? CblasTrans : CblasNoTrans,
              tb == Trans::kYes ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void set_blas_threads(int threads) {
  MOERUN_REQUIRE(threads >= 1, "BLAS threads must be >= 1 (got {})", threads);
  openblas_set_num_threads(threads);
}

int blas_threads() {
  return openblas_get_num_threads();
}

int default_blas_threads(int ranks_on_node) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, ranks_on_node));
}

double time_sgemm(int64_t M, int64_t N, int64_t K, int reps) {
  Tensor a = Tensor::empty({M, K}), b = Tensor::empty({N, K}), c = Tensor::empty({M, N});
  Rng rng(7);
  for (float& v : a.span<float>()) v = static_cast<float>(rng.uniform() - 0.5);
  for (float& v : b.span<float>()) v = static_cast<float>(rng.uniform() - 0.5);
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_seconds();
    sgemm(Trans::kNo, Trans::kYes, M, N, K, 1.0f, a.f32(), K, b.f32(), K, 0.0f, c.f32(), N);
    best = std::min(best, now_seconds() - t0);
  }
  return best;
}

const char* blas_core() {
  return openblas_get_corename();
}

namespace {
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

void select_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user chose (or we did)
  const std::string core = lower(openblas_get_corename());
  const char* want = nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    if (core != "skylakex" && core != "cooperlake" && core != "sapphirerapids") want = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    if (core != "haswell" && core != "zen" && core != "skylakex" && core != "cooperlake")
      want = "Haswell";
  }
  if (want == nullptr) return;
  setenv("OPENBLAS_CORETYPE", want, 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): keep running with the generic kernels, but say so once.
  log::warn(
      "moerun: OpenBLAS uses its {} kernels; export OPENBLAS_CORETYPE={} for ~5x faster GEMMs "
      "on this CPU",
      openblas_get_corename(), want);
}

}  // namespace moerun
