// Tensor: host access refuses device memory, views share storage, device_of agrees or throws.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "runtime/check.h"
#include "runtime/tensor.h"

namespace moerun {
namespace {

// A host buffer labelled as CUDA memory: enough to test the checks without a GPU.
Tensor fake_device_tensor(std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::shared_ptr<std::byte[]> storage(new std::byte[static_cast<size_t>(n) * sizeof(float)]);
  return Tensor::wrap(storage, std::move(shape), DType::kF32, Device::kCuda);
}

TEST(Tensor, HostAccessToDeviceMemoryIsRefused) {
  Tensor d = fake_device_tensor({3, 4});
  const Tensor& cd = d;
  EXPECT_THROW(d.f32(), Error);
  EXPECT_THROW(cd.f32(), Error);
  EXPECT_THROW(d.span<float>(), Error);
  EXPECT_THROW(d.row(1), Error);
  EXPECT_THROW(d.fill(1.0f), Error);
  EXPECT_THROW(d.zero(), Error);
  EXPECT_THROW(d.clone(), Error);
  try {
    d.f32();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("host access to a cuda tensor (3, 4)"), std::string::npos)
        << e.what();
  }
  // Backends still reach the pointer, and views keep the device.
  EXPECT_NE(d.device_data<float>(), nullptr);
  EXPECT_EQ(d.view(4, {4}).device(), Device::kCuda);
  EXPECT_EQ(d.view(4, {4}).device_data<float>(), d.device_data<float>() + 4);
  EXPECT_THROW(d.device_data<int32_t>(), Error);
}

TEST(Tensor, ViewsShareStorageAndCheckBounds) {
  Tensor t = Tensor::empty({4, 3});
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(i) + 0.5f;
  Tensor v = t.view(3, {2, 3});  // rows 1 and 2
  EXPECT_EQ(v.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(v.f32()[0], 3.5f);
  EXPECT_EQ(v.row(1)[2], 8.5f);
  v.fill(-1.0f);
  EXPECT_EQ(t.f32()[2], 2.5f);
  EXPECT_EQ(t.f32()[3], -1.0f);
  EXPECT_EQ(t.f32()[8], -1.0f);
  EXPECT_EQ(t.f32()[9], 9.5f);
  EXPECT_THROW(t.view(10, {3}), Error);
  EXPECT_THROW(t.view(-1, {1}), Error);
  EXPECT_NO_THROW(t.view(12, {0}));
  // The view keeps the buffer alive after the original handle goes.
  t = Tensor();
  EXPECT_EQ(v.f32()[5], -1.0f);
}

TEST(Tensor, DeviceOfAgreesOrThrows) {
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({3}), none;
  Tensor d = fake_device_tensor({2});
  EXPECT_EQ(device_of({&a, &b, &none}), Device::kCpu);
  EXPECT_EQ(device_of({&d, &none}), Device::kCuda);
  EXPECT_THROW(device_of({&a, &d}), Error);
}

TEST(Tensor, FromHostCopiesAndChecksTheCount) {
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9};
  Tensor t = Tensor::from_host<int32_t>(ids, {2, 3});
  EXPECT_EQ(t.dtype(), DType::kI32);
  EXPECT_EQ(t.data<int32_t>()[5], 9);
  EXPECT_THROW(Tensor::from_host<int32_t>(ids, {4, 2}), Error);
}

}  // namespace
}  // namespace moerun
