// The temporaries of DilatedAttention's calls (accumulators, score workspaces, the backward's
// deltas) kept across calls instead of allocated and freed per call: a buffer per label and
// memory space that grows to the largest request and stays until release(). A call makes its
// object's pool current (ScratchScope) and every temporary inside it, however deep in the
// drivers, comes from scratch_view(label, extents...), which falls back to a plain allocation when
// no pool is current.
//
// Why labels: one call never holds two live temporaries of one label (the drivers' workspaces
// are reused launch after launch on one stream), so a label names a buffer. A larger request of
// a label replaces its buffer: the old one is freed, which Kokkos makes safe for work still in
// flight (cudaFree waits for the device; host backends have finished). Objects that share a pool
// (the blocks of a model) must not run at the same time on different execution space instances.
#ifndef DILATED_IMPL_SCRATCH_POOL_HPP
#define DILATED_IMPL_SCRATCH_POOL_HPP

#include <Dilated_DeviceMemory.hpp>

#include <Kokkos_Core.hpp>

#include <any>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::Impl {

class ScratchPool {
 public:
  // At least `bytes` bytes (256-byte aligned) for `label` in MemorySpace.
  template <class MemorySpace>
  void* get(const char* label, std::size_t bytes) {
    using Buffer = Kokkos::View<unsigned char*, MemorySpace>;
    const std::string space = MemorySpace::name();
    for (auto& e : entries_) {
      if (e.label == label && e.space == space) {
        if (e.bytes < bytes) {
          e.buffer = Buffer();  // the old buffer first: the two need not coexist
          e.bytes = 0;          // (and none held if the new one does not fit)
          e.buffer = allocate_view<Buffer>(label, false, bytes);
          e.bytes = bytes;
        }
        return std::any_cast<Buffer&>(e.buffer).data();
      }
    }
    Buffer buffer = allocate_view<Buffer>(label, false, bytes);
    entries_.push_back({label, space, buffer, bytes});
    return std::any_cast<Buffer&>(entries_.back().buffer).data();
  }

  // Bytes held now.
  std::size_t bytes() const {
    std::size_t total = 0;
    for (const auto& e : entries_)
      total += e.bytes;
    return total;
  }
  void release() { entries_.clear(); }

 private:
  struct Entry {
    std::string label, space;
    std::any buffer;
    std::size_t bytes;
  };
  std::vector<Entry> entries_;
};

// The label of the attention's score workspace: the Original's forward score slots
// (impl/Dilated_OriginalMmaForward.hpp) and its backward's stored matrices
// (impl/Dilated_OriginalMmaBackward.hpp). The two are never live together (a forward returns
// before its backward starts), and neither outlives its call, so one buffer serves both (before,
// a training step held the forward's 136 MiB of slots beside the backward's matrices: E = 768,
// 12 heads, fp16, on an H200). A caller sharing the pool may borrow it between attention calls
// for a temporary of its own (the multihead layer's normed heads when it keeps no activations).
inline constexpr const char* score_workspace_label = "dilated::score_workspace";

// The pool of the call running in this thread (ScratchScope), or null.
inline ScratchPool*& current_scratch_pool() {
  static thread_local ScratchPool* pool = nullptr;
  return pool;
}

// Makes `pool` current for the scope (the previous one restored after it).
class ScratchScope {
 public:
  explicit ScratchScope(ScratchPool* pool) : previous_(current_scratch_pool()) {
    current_scratch_pool() = pool;
  }
  ~ScratchScope() { current_scratch_pool() = previous_; }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

 private:
  ScratchPool* previous_;
};

// A View of these extents for `label`: from the current pool when there is one (not
// initialised), else allocated (uninitialised, labelled). With `zero`, filled with 0 on `space`
// either way (what a View constructed from a label alone would hold).
template <class View, class ExecSpace, class... Extents>
View scratch_view(const ExecSpace& space, const char* label, bool zero, Extents... extents) {
  View view;
  if (ScratchPool* pool = current_scratch_pool()) {
    const std::size_t bytes = View::required_allocation_size(static_cast<std::size_t>(extents)...);
    view = View(static_cast<typename View::pointer_type>(
                    pool->get<typename View::memory_space>(label, bytes > 0 ? bytes : 1)),
                extents...);
  } else {
    view = allocate_view<View>(label, false, extents...);
  }
  using V = typename View::non_const_value_type;
  if constexpr (std::is_constructible_v<V, int>) {  // raw words (uint4) are never asked zeroed
    if (zero && view.span() > 0) Kokkos::deep_copy(space, view, V(0));
  } else {
    (void)space, (void)zero;
  }
  return view;
}

}  // namespace dilated::Impl

#endif  // DILATED_IMPL_SCRATCH_POOL_HPP
