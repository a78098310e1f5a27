// A fresh directory under the system temp dir for one test, removed with everything in it.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>

namespace moerun::testing {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(std::string_view tag = "test") {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           fmt::format("moerun_{}_{}_{:x}", tag, ::getpid(), (uint64_t{rd()} << 32) | rd());
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string prefix(const std::string& name) const { return file(name); }
};

}  // namespace moerun::testing
