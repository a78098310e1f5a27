// bf16/f16 <-> f32 (runtime/half.h): exhaustive round trips of every code, f16 decoding against
// the definition, round-to-nearest-even on random floats, and the exact ties and edges.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "runtime/half.h"
#include "tests/common/test_seed.h"

namespace moerun {
namespace {

using ::moerun::testing::TestSeed;

// |x - decode(r)| is minimal over r's neighbours, and a tie picks the even code.
template <class Enc, class Dec>
void expect_nearest_even(float x, Enc encode, Dec decode, uint16_t max_finite) {
  const uint16_t r = encode(x);
  const uint16_t mag = r & 0x7fff;
  ASSERT_LE(mag, max_finite) << x;
  const double d = std::fabs(static_cast<double>(decode(r)) - x);
  for (int delta : {-1, 1}) {
    const int nm = mag + delta;
    if (nm < 0 || nm > max_finite) continue;
    const uint16_t nb = static_cast<uint16_t>((r & 0x8000) | nm);
    const double dn = std::fabs(static_cast<double>(decode(nb)) - x);
    ASSERT_LE(d, dn) << "x=" << x << " code " << r << " neighbour " << nb;
    if (d == dn) {
      ASSERT_EQ(r & 1, 0) << "tie must go to even: x=" << x;
    }
  }
}

TEST(RuntimeHalf, Conversions) {
  // Exhaustive: every finite/inf code survives decode -> encode; NaN stays NaN.
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto c = static_cast<uint16_t>(h);
    const float f16 = f16_to_f32(c), bf = bf16_to_f32(c);
    if (std::isnan(f16)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f16))));
    } else {
      ASSERT_EQ(f32_to_f16(f16), c) << h;
    }
    if (std::isnan(bf)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bf))));
    } else {
      ASSERT_EQ(f32_to_bf16(bf), c) << h;
    }
  }
  // f16 decoding against the definition: (-1)^s 2^(e-15) (1 + m/1024), subnormals m 2^-24.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const uint32_t e = h >> 10, m = h & 0x3ff;
    const double want = e == 0 ? std::ldexp(m, -24) : std::ldexp(1.0 + m / 1024.0, int(e) - 15);
    ASSERT_EQ(static_cast<double>(f16_to_f32(static_cast<uint16_t>(h))), want) << h;
    ASSERT_EQ(static_cast<double>(f16_to_f32(static_cast<uint16_t>(h | 0x8000))), -want) << h;
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  // Round to nearest even on random floats over the whole f16 range and beyond bf16 precision.
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  for (int i = 0; i < 200000; ++i) {
    float bx;
    do {
      bx = std::bit_cast<float>(static_cast<uint32_t>(gen()));
    } while (!std::isfinite(bx) || std::fabs(bx) > 3.38e38f);
    expect_nearest_even(
        bx, [](float v) { return f32_to_bf16(v); }, [](uint16_t h) { return bf16_to_f32(h); },
        0x7f7f);
    const float f16x = std::ldexp(std::uniform_real_distribution<float>(-1, 1)(gen),
                                  static_cast<int>(gen() % 44) - 27);
    if (std::fabs(f16x) >= 65520.f) {
      ASSERT_EQ(f32_to_f16(f16x) & 0x7fff, 0x7c00) << f16x;  // beyond the last tie: infinity
      continue;
    }
    expect_nearest_even(
        f16x, [](float v) { return f32_to_f16(v); }, [](uint16_t h) { return f16_to_f32(h); },
        0x7bff);
  }
  // Exact ties and the edges.
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);  // the tie above the largest finite rounds to inf
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.f, -25)), 0x0002);  // 1.5 ulp: tie to even (2)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -14) - std::ldexp(1.f, -25)), 0x0400);  // to normal
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.f, -11)), 0x3c00);                  // tie, even stays
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.f, -8)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7f800001u)))))
      << "a NaN whose payload sits in the dropped bits stays NaN";
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
}

}  // namespace
}  // namespace moerun
