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

}  // namespace moerun
