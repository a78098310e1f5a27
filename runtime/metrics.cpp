// JSONL metrics file and the progress line.
#include "runtime/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "runtime/check.h"
#include "runtime/log.h"

namespace moerun {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "a");
  MOERUN_CONFIG_REQUIRE(file_ != nullptr, "cannot open the metrics file {}: {}", path,
                        std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

MetricsWriter::MetricsWriter(MetricsWriter&& o) noexcept
    : file_(std::exchange(o.file_, nullptr)), path_(std::move(o.path_)) {}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& o) noexcept {
  if (this != &o) {
    if (file_ != nullptr) std::fclose(file_);
    file_ = std::exchange(o.file_, nullptr);
    path_ = std::move(o.path_);
  }
  return *this;
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (file_ == nullptr) return;
  const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  MOERUN_REQUIRE(std::fprintf(file_, "%s\n", line.c_str()) > 0 && std::fflush(file_) == 0,
                 "writing the metrics file {} failed: {}", path_, std::strerror(errno));
}

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0) {}

void ProgressLine::update(const std::string& text) {
  if (!enabled_) return;
  if (tty_) {
    const size_t pad = last_len_ > text.size() ? last_len_ - text.size() : 0;
    // Redrawn in place on a terminal: the logger's prefix by hand, since a logged line ends.
    std::fprintf(stderr, "\r[r%d info] %s%*s", log::rank() < 0 ? 0 : log::rank(), text.c_str(),
                 static_cast<int>(pad), "");
    last_len_ = text.size();
    open_ = true;
    std::fflush(stderr);
  } else {
    log::write_any_rank(log::Level::kInfo, text);  // enabled_ already says who writes
  }
}

void ProgressLine::finish() {
  if (enabled_ && tty_ && open_) std::fprintf(stderr, "\n");
  open_ = false;
  last_len_ = 0;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace moerun
