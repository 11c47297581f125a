// Out of memory (issue 20) on every backend: an allocation that does not fit surfaces as
// dilated::DeviceOutOfMemory naming the buffer's label, the bytes asked and the memory space,
// with Kokkos' own message kept, and the object that failed stays usable: the next, smaller call
// succeeds and gives what a fresh object gives.
//
// Two ways to make an allocation fail: an impossible size (2^48 bytes and more: beyond any
// device and beyond a 47-bit address space; the Original attention's generic path asks a whole
// score matrix per team, m^2 for a segment of m tokens, so 2^23 tokens of one value each suffice)
// and a limited allocator (MemoryLimit: RLIMIT_AS on the host, DeviceMemoryCap on CUDA) for the
// buffers that are only as large as the inputs (the multihead layer's workspace).
#include <DilatedAttention.hpp>
#include <DilatedAttentionTraining.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/resource.h>

#include <cmath>
#include <cstddef>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define DILATED_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DILATED_TEST_ASAN 1
#endif
#endif

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using Catch::Matchers::ContainsSubstring;
using dilated::DeviceOutOfMemory;

constexpr bool on_host = std::is_same_v<MemSpace, Kokkos::HostSpace>;

template <class T>
using View4 = Kokkos::View<T****, Kokkos::LayoutRight, MemSpace>;
template <class T>
using View3 = Kokkos::View<T***, Kokkos::LayoutRight, MemSpace>;

// Fills a View with values in [-1, 1] that depend on `seed` and the position.
template <class View>
void fill(const View& view, int seed) {
  const auto host = Kokkos::create_mirror_view(view);
  for (std::size_t i = 0; i < host.size(); ++i)
    host.data()[i] = std::sin(0.37 * double(i) + 1.3 * seed);
  Kokkos::deep_copy(view, host);
}

// Whether two Views hold the same values, exactly.
template <class View>
bool same_values(const View& a, const View& b) {
  const auto ha = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a);
  const auto hb = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), b);
  if (ha.size() != hb.size()) return false;
  for (std::size_t i = 0; i < ha.size(); ++i) {
    if (!(ha.data()[i] == hb.data()[i])) return false;
  }
  return true;
}

// The Original attention on its generic path (no vendor GEMM, no tensor cores) on every backend:
// its score workspace is a whole m x m matrix per team.
dilated::AttentionOptions generic_original() {
  return dilated::AttentionOptions().set_vendor_gemm(false).set_original_tensor_cores(false);
}

// A memory space that refuses allocations beyond `headroom` bytes more than it holds now, for the
// scope: the host through RLIMIT_AS (the process' address space; the old limit restored after),
// CUDA through DeviceMemoryCap. `available()` is false where it cannot be made (AddressSanitizer
// reserves the address space its own way; no CUDA device).
class MemoryLimit {
 public:
  explicit MemoryLimit(std::size_t headroom) {
    if constexpr (on_host) {
#if !defined(DILATED_TEST_ASAN)
      if (getrlimit(RLIMIT_AS, &old_) != 0) return;
      const std::size_t used = address_space_bytes();
      if (used == 0) return;
      rlimit limited = old_;
      limited.rlim_cur = used + headroom;
      if (old_.rlim_cur != RLIM_INFINITY && old_.rlim_cur < limited.rlim_cur) return;
      set_ = setrlimit(RLIMIT_AS, &limited) == 0;
#else
      (void)headroom;
#endif
    } else {
      const auto info = dilated::device_memory_info();
      if (info.total == 0 || info.used() + headroom > info.total) return;
      cap_ = std::make_unique<dilated::DeviceMemoryCap>(info.used() + headroom);
      set_ = true;
    }
  }
  ~MemoryLimit() {
    if (on_host && set_) setrlimit(RLIMIT_AS, &old_);
  }
  MemoryLimit(const MemoryLimit&) = delete;
  MemoryLimit& operator=(const MemoryLimit&) = delete;
  bool available() const {
    return set_;
  }

 private:
  // VmSize of /proc/self/status, in bytes (0 where it cannot be read).
  static std::size_t address_space_bytes() {
    std::ifstream status("/proc/self/status");
    std::string key;
    while (status >> key) {
      if (key == "VmSize:") {
        std::size_t kib = 0;
        status >> kib;
        return kib * 1024;
      }
    }
    return 0;
  }
  rlimit old_{};
  std::unique_ptr<dilated::DeviceMemoryCap> cap_;
  bool set_ = false;
};

TEMPLATE_TEST_CASE(
    "DilatedAttention: a scratch buffer that cannot be allocated names its label "
    "and bytes, and the next smaller call succeeds",
    "[errors][memory]" TEST_CATEGORY, float, double) {
  using T = TestType;
  using Acc = dilated::Impl::accumulation_t<T>;
  constexpr int huge_n = 1 << 23;  // one segment of 2^23 tokens: a 2^46-entry score matrix
  const dilated::DilatedAttention<dilated::Original> attention({huge_n}, {1}, generic_original());
  const auto plan = attention.plan_scratch<ExecSpace, T>(1, huge_n, 1, 1, false);
  std::size_t expected = 0;
  for (const auto& e : plan.entries()) {
    if (e.label == "dilated::original::workspace") expected = e.bytes;
  }
  REQUIRE(expected >= (std::size_t(1) << 46) * sizeof(Acc));
  {
    // Not initialised (and not touched: the workspace fails before any kernel reads them).
    const auto make = [](const std::string& label) {
      return View4<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, label), 1, huge_n, 1, 1);
    };
    const View4<T> q = make("q"), k = make("k"), v = make("v"), out = make("out");
    try {
      attention.forward(ExecSpace(), q, k, v, out);
      FAIL("a " << expected << "-byte workspace was allocated");
    } catch (const DeviceOutOfMemory& e) {
      INFO(e.what());
      CHECK(e.label() == "dilated::original::workspace");
      CHECK(e.bytes() == expected);
      CHECK(e.memory_space() == MemSpace::name());
      CHECK_THAT(std::string(e.what()),
                 ContainsSubstring("allocating 'dilated::original::workspace'") &&
                     ContainsSubstring(std::to_string(expected) + " bytes"));
    }
  }
  // The pool holds nothing for the buffer that failed; the same object then runs a short
  // sequence and gives what a fresh object gives.
  const int n = 96;
  const View4<T> q("q", 2, n, 1, 8), k("k", 2, n, 1, 8), v("v", 2, n, 1, 8);
  fill(q, 1), fill(k, 2), fill(v, 3);
  const View4<T> out("out", 2, n, 1, 8), fresh_out("fresh_out", 2, n, 1, 8);
  attention.forward(ExecSpace(), q, k, v, out);
  const dilated::DilatedAttention<dilated::Original> fresh({huge_n}, {1}, generic_original());
  fresh.forward(ExecSpace(), q, k, v, fresh_out);
  Kokkos::fence();
  CHECK(same_values(out, fresh_out));
  CHECK(attention.scratch()->bytes() < expected);
}

TEST_CASE(
    "MultiheadDilatedAttention: a workspace that does not fit under a memory limit names "
    "its label, bytes and space, and the layer then runs a smaller input",
    "[errors][memory][layer]" TEST_CATEGORY) {
  using T = float;
  using Layer = dilated::MultiheadDilatedAttention<dilated::Improved, T, MemSpace>;
  constexpr int embed = 16, heads = 2;
  const auto make = [] {
    return Layer(embed, heads, {64, 128}, {1, 2}, 0.0, true, true, 1e-5, 1.0,
                 dilated::Semantics::grouped, 7);
  };
  Layer layer = make();
  const View3<T> small("small", 2, 80, embed), small_out("small_out", 2, 80, embed);
  fill(small, 4);
  layer.forward(ExecSpace(), small, small, small, small_out);  // handles, cuBLAS workspaces
  Kokkos::fence();

  const long big_n = 1 << 20;  // 64 MiB of input; the projections alone ask three times that
  const std::size_t input_bytes = std::size_t(big_n) * embed * sizeof(T);
  bool failed = false;
  {
    const View3<T> big("big", 1, big_n, embed), big_out("big_out", 1, big_n, embed);
    MemoryLimit limit(input_bytes / 2);
    if (!limit.available()) SKIP("no memory limit can be set here (AddressSanitizer, no device)");
    try {
      layer.forward(ExecSpace(), big, big, big, big_out);
      Kokkos::fence();
    } catch (const DeviceOutOfMemory& e) {
      failed = true;
      INFO(e.what());
      CHECK_THAT(e.label(), ContainsSubstring("dilated::"));
      CHECK(e.bytes() >= input_bytes);
      CHECK(e.memory_space() == MemSpace::name());
      CHECK_THAT(std::string(e.what()), ContainsSubstring("allocating '" + e.label() + "'") &&
                                            ContainsSubstring(std::to_string(e.bytes())));
    }
  }
  CHECK(failed);
  const View3<T> out("out", 2, 80, embed), fresh_out("fresh_out", 2, 80, embed);
  layer.forward(ExecSpace(), small, small, small, out);
  make().forward(ExecSpace(), small, small, small, fresh_out);
  Kokkos::fence();
  CHECK(same_values(out, small_out));
  CHECK(same_values(out, fresh_out));
}

TEST_CASE("AdamW: a state that cannot be allocated leaves none, and the next step starts afresh",
          "[errors][memory][training]" TEST_CATEGORY) {
  using T = float;
  using Flat = dilated::training::FlatView<T, MemSpace>;
  using Tensors = dilated::training::ParameterGradients<T, MemSpace>;
  const Kokkos::View<T*, MemSpace> w("w", 16), g("g", 16), w2("w2", 16);
  fill(w, 5), fill(g, 6);
  Kokkos::deep_copy(w2, w);
  // A tensor of 2^48 values over w's memory: never read, as its state (2^50 bytes a moment)
  // cannot be made.
  const std::size_t huge = std::size_t(1) << 48;
  const Tensors small{{"w", {16}, Flat(w.data(), 16), Flat(g.data(), 16)}};
  Tensors with_huge = small;
  with_huge.push_back({"huge", {huge}, Flat(w.data(), huge), Flat(g.data(), huge)});

  dilated::training::AdamW<T, MemSpace> adamw;
  try {
    adamw.step(ExecSpace(), with_huge);
    FAIL("a 2^50-byte optimizer state was allocated");
  } catch (const DeviceOutOfMemory& e) {
    INFO(e.what());
    CHECK_THAT(e.label(), ContainsSubstring("dilated::training::AdamW::huge::"));
    CHECK(e.bytes() == huge * sizeof(T));
    CHECK(e.memory_space() == MemSpace::name());
  }
  adamw.step(ExecSpace(), small);  // a first step: the failed list left no state behind
  dilated::training::AdamW<T, MemSpace> fresh;
  fresh.step(ExecSpace(), Tensors{{"w", {16}, Flat(w2.data(), 16), Flat(g.data(), 16)}});
  Kokkos::fence();
  CHECK(same_values(w, w2));
}

}  // namespace
