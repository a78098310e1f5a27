// runtime/durable_file.h: write_file_atomic replaces a file whole and leaves no PATH.tmp; a write
// the device refuses (/dev/full) or a missing directory is an Error naming the file and the cause.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "runtime/durable_file.h"
#include "tests/common/expect_error.h"
#include "tests/common/temp_dir.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(RuntimeDurableFile, AtomicWriteReplacesTheFileWhole) {
  TempDir dir("durable");
  const std::string path = dir.file("latest");
  write_file_atomic(path, "10\n");
  EXPECT_EQ(read(path), "10\n");
  const std::string big(1 << 20, 'z');
  write_file_atomic(path, big);
  EXPECT_EQ(read(path), big);
  write_file_atomic(path, "");
  EXPECT_EQ(read(path), "");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  fsync_path(dir.path.string());  // a directory
  fsync_path(path);               // a file
}

TEST(RuntimeDurableFile, FailuresNameTheFileAndTheCause) {
  TempDir dir("durable");
  expect_error([&] { write_file_atomic(dir.file("no/such/dir/x"), "1"); },
               {"cannot create", "no/such/dir/x.tmp", "No such file or directory"});
  EXPECT_FALSE(fs::exists(dir.file("no")));
  if (fs::exists("/dev/full")) {  // every write fails with ENOSPC
    expect_error([&] { write_file_synced("/dev/full", "data"); },
                 {"write failed on /dev/full", "No space left on device"});
  }
  const std::string path = dir.file("kept");
  write_file_atomic(path, "old");
  expect_error([&] { rename_durably(dir.file("absent"), path); },
               {"cannot rename", "absent", "No such file or directory"});
  EXPECT_EQ(read(path), "old");
  expect_error([&] { fsync_path(dir.file("absent")); }, {"absent"});
}

}  // namespace
}  // namespace moerun::testing
