// Durable file replacement, the one way moerun writes a small file that readers must never see
// torn (checkpoint manifests, `latest`, safetensors indexes, config files): write PATH.tmp, fsync
// it, rename it over PATH, fsync the directory. After a crash or a power loss a reader finds the
// old file or the new one. Errors are moerun::Error naming the file and the system's reason.
#pragma once

#include <string>
#include <string_view>

namespace moerun {

// The whole protocol; PATH.tmp is removed when a step fails.
void write_file_atomic(const std::string& path, std::string_view content);

// The halves of write_file_atomic, for a caller that does work in between (the checkpoint commit
// protocol has a test hook after each): create or truncate `path`, write, fsync, close ...
void write_file_synced(const std::string& path, std::string_view content);
// ... then rename `from` over `to` and fsync the directory of `to`.
void rename_durably(const std::string& from, const std::string& to);

// fsync of a file or a directory. A file system that cannot fsync a directory (EINVAL) is
// accepted: there the rename is as durable as it can be made.
void fsync_path(const std::string& path);

}  // namespace moerun
