// bf16 and f16 <-> f32 conversions (runtime/half.h): bit manipulation, no hardware support needed.
#include "runtime/half.h"

#include <bit>
#include <limits>

#include "runtime/check.h"

namespace moerun {

static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "IEEE-754 binary32");

uint16_t f32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

float bf16_to_f32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

uint16_t f32_to_f16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 -> inf
  if (abs < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
    const uint32_t e = abs >> 23;
    if (e == 0) return static_cast<uint16_t>(sign);  // zero or f32 subnormal (< 2^-126)
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // value * 2^24 = m >> shift
    if (shift > 24) return static_cast<uint16_t>(sign);
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((abs >> 23) - 112) << 10) | ((abs >> 13) & 0x3ffu);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits = 0;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      uint32_t e = 113;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out) {
  MOERUN_REQUIRE(in.size() == out.size(), "f32_to_bf16: {} inputs, {} outputs", in.size(),
                 out.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = f32_to_bf16(in[i]);
}
void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  MOERUN_REQUIRE(in.size() == out.size(), "bf16_to_f32: {} inputs, {} outputs", in.size(),
                 out.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = bf16_to_f32(in[i]);
}
void f32_to_f16(std::span<const float> in, std::span<uint16_t> out) {
  MOERUN_REQUIRE(in.size() == out.size(), "f32_to_f16: {} inputs, {} outputs", in.size(),
                 out.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = f32_to_f16(in[i]);
}
void f16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  MOERUN_REQUIRE(in.size() == out.size(), "f16_to_f32: {} inputs, {} outputs", in.size(),
                 out.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = f16_to_f32(in[i]);
}

}  // namespace moerun
