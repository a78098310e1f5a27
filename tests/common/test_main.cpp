// GoogleTest main for every moerun test binary: MPI is initialised once (singleton or under
// mpiexec); only rank 0 prints results, other ranks print failures only.
#include <gtest/gtest.h>

#include "comm/comm.h"

int main(int argc, char** argv) {
  moerun::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  return RUN_ALL_TESTS();
}
