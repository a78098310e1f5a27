// write_file_atomic and its halves (runtime/durable_file.h).
#include "runtime/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "runtime/check.h"

namespace moerun {

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw Error(fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

// Closes fd, keeping the errno of an earlier failure.
void close_keep_errno(int fd) {
  const int saved = errno;
  ::close(fd);
  errno = saved;
}

}  // namespace

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open for fsync", path, errno);
  struct stat st {};
  const bool dir = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
  if (::fsync(fd) != 0 && !(dir && errno == EINVAL)) {
    const int err = errno;
    ::close(fd);
    fail("fsync failed on", path, err);
  }
  ::close(fd);
}

void write_file_synced(const std::string& path, std::string_view content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create", path, errno);
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      close_keep_errno(fd);
      fail("write failed on", path, err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync failed on", path, err);
  }
  if (::close(fd) != 0) fail("close failed on", path, errno);
}

void rename_durably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) fail("cannot rename " + from + " to", to, errno);
  const std::filesystem::path parent = std::filesystem::path(to).parent_path();
  fsync_path(parent.empty() ? std::string(".") : parent.string());
}

void write_file_atomic(const std::string& path, std::string_view content) {
  const std::string tmp = path + ".tmp";
  try {
    write_file_synced(tmp, content);
    rename_durably(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());  // nothing if the rename happened
    throw;
  }
}

}  // namespace moerun
