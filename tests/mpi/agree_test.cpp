// comm/agree.h: local work on rank 0 or on every rank, and every rank throwing the same agreed
// failure (its kind and message); the Comm collectives agreement and io use (first_rank_where,
// same_everywhere, string broadcast, gather).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/agree.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

class SpecialConfigError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

enum class Got { kNothing, kSpecial, kConfig, kError, kOther };

// What fn threw on this rank, and its message.
template <class Fn>
Got outcome(Fn&& fn, std::string* msg) {
  try {
    fn();
  } catch (const SpecialConfigError& e) {
    *msg = e.what();
    return Got::kSpecial;
  } catch (const ConfigError& e) {
    *msg = e.what();
    return Got::kConfig;
  } catch (const Error& e) {
    *msg = e.what();
    return Got::kError;
  } catch (...) {
    return Got::kOther;
  }
  return Got::kNothing;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Agree, OnRank0RunsThereOnlyAndEveryRankThrowsItsError) {
  const Comm world = Comm::world();
  const int me = world.rank();
  int runs = 0;
  std::string msg;
  EXPECT_EQ(outcome([&] { on_rank0(world, "counting", [&] { ++runs; }); }, &msg), Got::kNothing);
  MOERUN_EXPECT_ALL(world, runs == (me == 0 ? 1 : 0));

  // A ConfigError on rank 0: a ConfigError everywhere, the same message, and who failed.
  Got got = outcome(
      [&] {
        on_rank0(world, "checking the input", [] { throw ConfigError("--data x: no such file"); });
      },
      &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kConfig && has(msg, "--data x: no such file"));
  MOERUN_EXPECT_ALL(world, me == 0 ? msg == "--data x: no such file"
                                   : has(msg, "(checking the input failed on rank 0)"));

  // Another exception: an Error (not a ConfigError) everywhere, unless ErrorT says otherwise.
  got = outcome([&] { on_rank0(world, "io", [] { throw std::runtime_error("disk on fire"); }); },
                &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kError && has(msg, "disk on fire"));
  got = outcome(
      [&] {
        on_rank0<ConfigError, ConfigError>(world, "io",
                                           [] { throw std::runtime_error("disk on fire"); });
      },
      &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kConfig && has(msg, "disk on fire"));
  // A derived ConfigError type for bad input (io uses CheckpointError).
  got = outcome(
      [&] { on_rank0<SpecialConfigError>(world, "ckpt", [] { throw ConfigError("bad step"); }); },
      &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kSpecial && has(msg, "bad step"));
}

TEST(Agree, OnEveryRankReportsTheLowestFailingRank) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  std::string msg;
  Got got = outcome([&] { on_every_rank(world, "nothing", [] {}); }, &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kNothing);
  // The last rank and (when W > 2) rank 1 fail: rank min(1, W - 1) is reported everywhere.
  const int first = W > 1 ? 1 : 0;
  got = outcome(
      [&] {
        on_every_rank(world, "loading", [&] {
          if (me == W - 1 || me == 1) throw Error(fmt::format("rank {} broke", me));
        });
      },
      &msg);
  MOERUN_EXPECT_ALL(world, got == Got::kError && has(msg, fmt::format("rank {} broke", first)));
  MOERUN_EXPECT_ALL(world,
                    me == first || has(msg, fmt::format("(loading failed on rank {})", first)));
}

TEST(Agree, CommCollectivesForAgreement) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  EXPECT_EQ(world.first_rank_where(false), W);
  EXPECT_EQ(world.first_rank_where(me == W - 1), W - 1);
  EXPECT_EQ(world.first_rank_where(true), 0);
  EXPECT_TRUE(world.same_everywhere(0x1234'5678'9abc'def0ull));
  EXPECT_EQ(world.same_everywhere(me == W - 1 ? 7u : 8u), W == 1);
  std::string text = me == W - 1 ? std::string("from the last rank\0with a NUL", 29) : "x";
  world.broadcast(text, W - 1);
  EXPECT_EQ(text, std::string("from the last rank\0with a NUL", 29));
  const std::vector<int64_t> mine = {me, 10 * me, -me};
  const std::vector<int64_t> all = world.gather(mine, 0);
  if (me == 0) {
    ASSERT_EQ(all.size(), 3u * static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) {
      EXPECT_EQ(all[3 * r], r);
      EXPECT_EQ(all[3 * r + 1], 10 * r);
      EXPECT_EQ(all[3 * r + 2], -r);
    }
  } else {
    EXPECT_TRUE(all.empty());
  }
}

}  // namespace
}  // namespace moerun::testing
