// bf16 and f16 (IEEE binary16) <-> f32, beside Tensor's dtypes: the storage formats of model
// weights in safetensors files (and of DType::kBF16 tensors).
#pragma once

#include <cstdint>
#include <span>

namespace moerun {

// Scalar conversions. f32 -> bf16/f16 round to nearest, ties to even; NaN stays NaN (quiet), and
// values beyond the f16 range become infinity.
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
// Spans of equal length.
void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out);
void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out);
void f32_to_f16(std::span<const float> in, std::span<uint16_t> out);
void f16_to_f32(std::span<const uint16_t> in, std::span<float> out);

}  // namespace moerun
