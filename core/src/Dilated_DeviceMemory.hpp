// dilated::DeviceOutOfMemory: what the library throws when a View it allocates does not fit, naming
// the buffer (its Kokkos label), the bytes asked and the memory space, instead of Kokkos's own
// message (the type depends on the version: a View allocation throws std::runtime_error in Kokkos
// 3.4 and 4.x, "... failed to allocate ...", a raw MemorySpace::allocate and newer Kokkos a
// std::bad_alloc, RawMemoryAllocationFailure or BadAlloc; both are caught by their standard base,
// none gives the exact size), which is kept at the end of what(). Every buffer the library
// allocates at run time goes through Impl::allocate_view (ensure_extents, ensure_capacity, the
// scratch pool, the optimizers' state, parameters, the loss's, the clipping's and cuBLASLt's
// workspaces), so a training step or a layer call that does not fit reports the allocation that
// failed; nothing is left half-made: a grown buffer releases the old one first and is recorded only
// once made (a failed ensure_extents leaves the View empty, a failed pool entry holds no bytes, an
// optimizer whose state does not fit holds none), so the next call, smaller, succeeds.
//
// A std::runtime_error rather than a std::bad_alloc: it carries a message (bad_alloc's what()
// is fixed by its type), it is what Kokkos throws for the same failure (a caller catching
// Kokkos' error keeps working), and a std::bad_alloc stays what it means in C++, a failure of
// the host's operator new.
#ifndef DILATED_DEVICE_MEMORY_HPP
#define DILATED_DEVICE_MEMORY_HPP

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dilated {

class DeviceOutOfMemory : public std::runtime_error {
 public:
  DeviceOutOfMemory(const std::string& label, std::size_t bytes, const std::string& space,
                    const std::string& detail)
      : std::runtime_error(message(label, bytes, space, detail)),
        label_(label),
        bytes_(bytes),
        space_(space) {}
  // The Kokkos label of the buffer that did not fit, the bytes it asked, its memory space.
  const std::string& label() const { return label_; }
  std::size_t bytes() const { return bytes_; }
  const std::string& memory_space() const { return space_; }

 private:
  static std::string message(const std::string& label, std::size_t bytes, const std::string& space,
                             const std::string& detail) {
    // One line: Kokkos' message (kept whole) spans lines and pads with spaces.
    std::string kokkos;
    for (const char c : detail) {
      const bool blank = c == ' ' || c == '\n' || c == '\r' || c == '\t';
      if (!blank || (!kokkos.empty() && kokkos.back() != ' ')) kokkos += blank ? ' ' : c;
    }
    while (!kokkos.empty() && kokkos.back() == ' ')
      kokkos.pop_back();
    std::ostringstream out;
    out << "dilated: out of " << space << " memory: allocating '" << label << "' (" << bytes
        << " bytes, " << static_cast<double>(bytes) / (1 << 30) << " GiB) failed (" << kokkos
        << ")";
    return out.str();
  }
  std::string label_;
  std::size_t bytes_;
  std::string space_;
};

// The default device's memory as its driver counts it: bytes free and in all (CUDA:
// cudaMemGetInfo, which counts every process's and the CUDA context's allocations); zeros on a
// build without a device.
struct DeviceMemoryInfo {
  std::size_t free = 0, total = 0;
  std::size_t used() const { return total - free; }
};
inline DeviceMemoryInfo device_memory_info() {
  DeviceMemoryInfo info;
#if defined(KOKKOS_ENABLE_CUDA)
  if (cudaMemGetInfo(&info.free, &info.total) != cudaSuccess) info = DeviceMemoryInfo();
#endif
  return info;
}

// Makes the default CUDA device behave as one of `limit_bytes` in all: takes total - limit bytes
// up front (one cudaMalloc, outside Kokkos, held until destruction), so that the device itself
// refuses any allocation beyond the limit; what the process already holds (the CUDA context)
// counts against the limit, as it would on the smaller device. Throws std::invalid_argument
// naming limit_bytes without a CUDA device, when the limit exceeds the device, or when the
// process already holds more than it; DeviceOutOfMemory when the ballast cannot be taken
// (another process holds the memory).
class DeviceMemoryCap {
 public:
  explicit DeviceMemoryCap(std::size_t limit_bytes) : limit_(limit_bytes) {
    constexpr const char* fn = "dilated::DeviceMemoryCap";
    const DeviceMemoryInfo info = device_memory_info();
    if (info.total == 0) {
      throw std::invalid_argument(std::string(fn) +
                                  ": limit_bytes needs a CUDA device (this build has none)");
    }
    if (limit_bytes > info.total || limit_bytes < info.used()) {
      std::ostringstream out;
      out << fn << ": limit_bytes = " << limit_bytes << " must lie between the bytes in use now ("
          << info.used() << ") and the device's total (" << info.total << ")";
      throw std::invalid_argument(out.str());
    }
    ballast_bytes_ = info.total - limit_bytes;
#if defined(KOKKOS_ENABLE_CUDA)
    if (ballast_bytes_ > 0 && cudaMalloc(&ballast_, ballast_bytes_) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error: later CUDA calls must not see it
      ballast_ = nullptr;
      throw DeviceOutOfMemory("dilated::DeviceMemoryCap::ballast", ballast_bytes_, "Cuda",
                              "another process holds device memory");
    }
#endif
  }
  ~DeviceMemoryCap() {
#if defined(KOKKOS_ENABLE_CUDA)
    if (ballast_) cudaFree(ballast_);
#endif
  }
  DeviceMemoryCap(const DeviceMemoryCap&) = delete;
  DeviceMemoryCap& operator=(const DeviceMemoryCap&) = delete;

  std::size_t limit_bytes() const {
    return limit_;
  }
  std::size_t ballast_bytes() const {
    return ballast_bytes_;
  }

 private:
  std::size_t limit_ = 0, ballast_bytes_ = 0;
  [[maybe_unused]] void* ballast_ = nullptr;  // CUDA builds only
};

namespace Impl {

// Whether an exception Kokkos threw from an allocation says the memory was not there (Kokkos 4:
// "... memory space failed to allocate ..."; 3.4 throws std::bad_alloc).
inline bool is_allocation_failure(const std::string& what) {
  return what.find("failed to allocate") != std::string::npos ||
         what.find("out of memory") != std::string::npos ||
         what.find("cudaErrorMemoryAllocation") != std::string::npos;
}

// A View of these extents labelled `label`, uninitialised (zero-filled with `zero`); throws
// DeviceOutOfMemory (label, bytes, space) when it does not fit.
template <class View, class... Extents>
View allocate_view(const std::string& label, bool zero, Extents... extents) {
  const auto fail = [&](const char* detail) {
    throw DeviceOutOfMemory(label,
                            View::required_allocation_size(static_cast<std::size_t>(extents)...),
                            View::memory_space::name(), detail);
  };
  try {
    if (zero) return View(label, extents...);
    return View(Kokkos::view_alloc(Kokkos::WithoutInitializing, label), extents...);
  } catch (const std::bad_alloc& e) {
    fail(e.what());
  } catch (const std::runtime_error& e) {
    if (!is_allocation_failure(e.what())) throw;
    fail(e.what());
  }
  return View();  // not reached
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_DEVICE_MEMORY_HPP
