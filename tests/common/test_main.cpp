// GoogleTest main for every moerun test binary: MPI is initialised once (singleton or under
// mpiexec); only rank 0 prints results, other ranks print failures only.
#include <gtest/gtest.h>

#include "comm/comm.h"
#include "runtime/log.h"

#if defined(__SANITIZE_ADDRESS__)
// Open MPI leaks by design at exit; LeakSanitizer would fail every run (DESIGN.md, pitfalls).
// ASAN_OPTIONS from the environment still override this.
extern "C" const char* __asan_default_options() {
  return "detect_leaks=0";
}
#endif

int main(int argc, char** argv) {
  moerun::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  moerun::log::init(rank, {});  // rank 0 logs, as in moerun
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  return RUN_ALL_TESTS();
}
