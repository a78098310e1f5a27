// The collective half of comm/agree.h: the lowest failing rank broadcasts its failure.
#include "comm/agree.h"

namespace moerun {

LocalFailure agree_on_failure(const Comm& comm, const LocalFailure& local) {
  const int first = comm.first_rank_where(local.failed());
  if (first >= comm.size()) return {};
  std::string text;
  if (comm.rank() == first)
    text = (local.kind == LocalFailure::Kind::kConfig ? "C" : "E") + local.message;
  comm.broadcast(text, first);
  LocalFailure agreed;
  agreed.kind =
      !text.empty() && text[0] == 'C' ? LocalFailure::Kind::kConfig : LocalFailure::Kind::kError;
  agreed.message = text.empty() ? std::string() : text.substr(1);
  agreed.rank = first;
  return agreed;
}

}  // namespace moerun
