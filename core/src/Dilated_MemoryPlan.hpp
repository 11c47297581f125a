// dilated::MemoryPlan: the device buffers a call (or a whole training step) will hold, listed
// before anything is allocated: each with the label its allocation carries, what it is for (a
// MemoryKind), its bytes and how many such buffers there are. The objects that allocate write
// their own entries (DilatedAttention::plan_scratch, the blocks', the model's, the optimizers'),
// from the same extents their allocations use; tests compare a plan with the bytes Kokkos'
// allocation hooks see in a real call.
//
// footprint() adds what the allocator takes beyond the bytes asked: Kokkos puts a 128-byte
// header before every View's data, and the CUDA driver hands out device memory in 2 MiB pages
// for allocations above 1 MiB (smaller ones share pages, in 512-byte steps). The host's
// allocator is taken as exact.
#ifndef DILATED_MEMORY_PLAN_HPP
#define DILATED_MEMORY_PLAN_HPP

#include <array>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace dilated {

// What a buffer holds, as a training step's memory is reported.
enum class MemoryKind {
  weights,              // the parameters in their storage type
  master_weights,       // the optimizer's fp32 copy of half / bf16 parameters
  gradients,            // the parameters' gradients
  optimizer_state,      // moments (and the 8-bit optimizer's block scales)
  activations,          // what a forward keeps for its backward (the residual stream included)
  workspace,            // buffers reused by every layer (the blocks' shared set, the projections')
  attention_workspace,  // DilatedAttention's scratch pool
  loss_workspace,       // the chunked cross-entropy's and the embedding backward's buffers
  inputs,               // the caller's token ids and targets
  library               // the GEMM library's workspace
};
inline constexpr std::array<MemoryKind, 10> memory_kinds{MemoryKind::weights,
                                                         MemoryKind::master_weights,
                                                         MemoryKind::gradients,
                                                         MemoryKind::optimizer_state,
                                                         MemoryKind::activations,
                                                         MemoryKind::workspace,
                                                         MemoryKind::attention_workspace,
                                                         MemoryKind::loss_workspace,
                                                         MemoryKind::inputs,
                                                         MemoryKind::library};

inline const char* to_string(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::weights:
      return "weights";
    case MemoryKind::master_weights:
      return "master_weights";
    case MemoryKind::gradients:
      return "gradients";
    case MemoryKind::optimizer_state:
      return "optimizer_state";
    case MemoryKind::activations:
      return "activations";
    case MemoryKind::workspace:
      return "workspace";
    case MemoryKind::attention_workspace:
      return "attention_workspace";
    case MemoryKind::loss_workspace:
      return "loss_workspace";
    case MemoryKind::inputs:
      return "inputs";
    case MemoryKind::library:
      return "library";
  }
  return "unknown";
}

class MemoryPlan {
 public:
  struct Entry {
    std::string label;
    MemoryKind kind;
    std::size_t bytes;  // of one buffer, as Kokkos allocates it
    std::size_t count;  // buffers of this size
  };

  // `count` buffers of `bytes` each (nothing for count 0), each rounded up to 8 bytes as a
  // View's allocation is (Kokkos sizes every View's memory in whole 8-byte words).
  MemoryPlan& add(std::string label, MemoryKind kind, std::size_t bytes, std::size_t count = 1) {
    if (count > 0) entries_.push_back({std::move(label), kind, (bytes + 7) / 8 * 8, count});
    return *this;
  }
  MemoryPlan& add(const MemoryPlan& other) {
    entries_.insert(entries_.end(), other.entries_.begin(), other.entries_.end());
    return *this;
  }
  const std::vector<Entry>& entries() const { return entries_; }
  std::size_t allocations() const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      total += e.count;
    return total;
  }
  // Bytes asked, in all or of one kind.
  std::size_t bytes() const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      total += e.bytes * e.count;
    return total;
  }
  std::size_t bytes(MemoryKind kind) const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      if (e.kind == kind) total += e.bytes * e.count;
    return total;
  }
  // Bytes the device gives for them (device_pages: the CUDA rule above; else as asked).
  std::size_t footprint(bool device_pages) const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      total += footprint_of(e.bytes, device_pages) * e.count;
    return total;
  }
  std::size_t footprint(MemoryKind kind, bool device_pages) const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      if (e.kind == kind) total += footprint_of(e.bytes, device_pages) * e.count;
    return total;
  }

  static std::size_t footprint_of(std::size_t bytes, bool device_pages) {
    if (!device_pages) return bytes;
    constexpr std::size_t header = 128, page = std::size_t(2) << 20, step = 512;
    const std::size_t asked = bytes + header;
    const std::size_t unit = asked > (std::size_t(1) << 20) ? page : step;
    return (asked + unit - 1) / unit * unit;
  }

 private:
  std::vector<Entry> entries_;
};

}  // namespace dilated

#endif  // DILATED_MEMORY_PLAN_HPP
