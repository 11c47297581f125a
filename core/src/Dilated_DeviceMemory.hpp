// dilated::DeviceOutOfMemory: what the library throws when a View it allocates does not fit,
// naming the buffer (its Kokkos label), the bytes asked and the memory space, instead of Kokkos's
// own message (std::runtime_error in Kokkos 4, std::bad_alloc in 3.4, neither with the exact
// size). Every buffer the library keeps across calls is allocated through Impl::allocate_view
// (ensure_extents, the scratch pool, the optimizers' state, parameters), so a training step or
// a layer call that does not fit reports the allocation that failed; nothing is left half-made
// (the object keeps its previous buffers; a failed ensure_extents leaves the View empty).
#ifndef DILATED_DEVICE_MEMORY_HPP
#define DILATED_DEVICE_MEMORY_HPP

#include <Kokkos_Core.hpp>

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
    std::ostringstream out;
    out << "dilated: out of " << space << " memory: allocating '" << label << "' (" << bytes
        << " bytes, " << static_cast<double>(bytes) / (1 << 30) << " GiB) failed (" << detail
        << ")";
    return out.str();
  }
  std::string label_;
  std::size_t bytes_;
  std::string space_;
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
