// MetricsWriter: one JSON object per line (JSONL), flushed per record so that a killed job
// keeps everything up to its last step; ProgressLine: rank 0's status line, redrawn in place on
// a terminal and printed one line per update otherwise (Slurm logs).
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace moerun {

class MetricsWriter {
 public:
  MetricsWriter() = default;  // disabled: write() does nothing (ranks other than 0)
  // Appends to path (creating it); throws ConfigError naming the file if it cannot be opened.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& o) noexcept;
  MetricsWriter& operator=(MetricsWriter&& o) noexcept;

  void write(const nlohmann::json& record);
  bool enabled() const { return file_ != nullptr; }
  const std::string& path() const { return path_; }

 private:
  std::FILE* file_ = nullptr;
  std::string path_;
};

class ProgressLine {
 public:
  explicit ProgressLine(bool enabled);  // on a tty (stderr): redraw with '\r'
  void update(const std::string& text);
  void finish();  // ends a redrawn line with a newline
  ~ProgressLine() { finish(); }

 private:
  bool enabled_, tty_;
  bool open_ = false;
  size_t last_len_ = 0;
};

// "1h02m", "3m05s", "12s": for ETAs.
std::string format_duration(double seconds);

}  // namespace moerun
