// Row-major single-precision GEMM over OpenBLAS, and the per-rank BLAS thread count.
#pragma once

#include <cstdint>

namespace moerun {

enum class Trans { kNo, kYes };

// C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C; row-major, leading dimensions in
// elements.
void sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Sets OpenBLAS's thread count for this process (ranks x threads must not exceed the cores).
void set_blas_threads(int threads);
int blas_threads();
// One rank per core by default: the cores of this node divided among its ranks (at least 1).
int default_blas_threads(int ranks_on_node);

// Seconds per call of a plain sgemm C(M,N) = A(M,K) B(N,K)^T on random data, best of reps: the
// reference that benchmarks and MFU compare against. Never used by tests.
double time_sgemm(int64_t M, int64_t N, int64_t K, int reps);

// The OpenBLAS kernel family in use ("SkylakeX", "Haswell", "Prescott", ...).
const char* blas_core();

// Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) falls back to its generic SSE3 "Prescott" kernels on
// CPUs newer than it knows (e.g. Emerald Rapids), 5x slower than its AVX-512 kernels there.
// The core is chosen when the library loads, before main, so this re-executes the program
// (same argv, same pid, before MPI_Init) with OPENBLAS_CORETYPE set to the best family the CPU
// supports. Does nothing when OPENBLAS_CORETYPE is already set or the core is already good.
void select_blas_kernels(char** argv);

}  // namespace moerun
