// Entry points of the moerun jobs (argv[0] is the job name).
#pragma once

namespace moerun {

int run_bench(int argc, char** argv);
int run_prepare(int argc, char** argv);
int run_train(int argc, char** argv);
int run_convert(int argc, char** argv);
int run_bench_train(int argc, char** argv);       // `moerun bench train`
int run_bench_checkpoint(int argc, char** argv);  // `moerun bench checkpoint`
int run_inspect(int argc, char** argv);
int run_scale(int argc, char** argv);     // `moerun scale collect`
int run_plan(int argc, char** argv);      // `moerun plan`: a layout on paper
int run_generate(int argc, char** argv);  // `moerun generate`: text from a checkpoint

}  // namespace moerun
