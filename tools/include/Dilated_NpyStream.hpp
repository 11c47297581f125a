// .npy files to and from dense Views a chunk at a time, for the command-line tool: an input is
// read in its file's dtype and converted while it is copied into the View's storage type, an
// output converted while it is copied out into the file's, so the host holds one chunk of file
// bytes and one staging chunk, never a whole array. (The tool held every input as double: a
// (1, 4Mi, 12, 64) half problem, 6.4 GB a tensor, needed ~77 GB of host memory; issue 20.)
// Conversions are those of the old double path, bit for bit: a file value is widened to double
// (exact) and cast to the storage type; an output value is widened to double and rounded once to
// the file's dtype. Internal to this repository's programs (tools/include), not installed.
#ifndef DILATED_NPY_STREAM_HPP
#define DILATED_NPY_STREAM_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Npy.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::tools {

// A .npy file whose header has been read and checked (the file holds the bytes its shape needs);
// its data is read later, straight into a View (read_into).
struct NpyFile {
  std::string path;
  npy::Header header;
  std::streamoff data_offset = 0;
};

// Throws npy::FormatError when `path` cannot be opened or is not a .npy file we read.
inline NpyFile open_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw npy::FormatError(path + ": cannot open for reading");
  NpyFile file{path, npy::read_header(in, path), 0};
  file.data_offset = in.tellg();
  return file;
}

// Elements per chunk: 4 Mi, 8 to 32 MiB of staging, large enough that a host-device copy runs
// near its bandwidth, small beside any array worth streaming.
inline constexpr std::size_t stream_chunk = std::size_t(1) << 22;

// Whether a file element of `dtype` has the bits of storage type T (then no conversion).
template <class T>
bool same_bits(const std::string& dtype) {
  if constexpr (std::is_same_v<T, double>) return dtype == "<f8";
  if constexpr (std::is_same_v<T, float>) return dtype == "<f4";
#if !DILATED_HALF_IS_FLOAT
  if constexpr (std::is_same_v<T, Kokkos::Experimental::half_t>) {
    static_assert(sizeof(T) == 2, "half_t holds IEEE binary16 bits");
    return dtype == "<f2";
  }
#endif
  return false;
}

namespace Impl {

// Runs f(i) for i in [0, count) on the host's threads (a chunk converts in ~1 ms on 16 cores; a
// 6.4 GB tensor in float32 would otherwise spend seconds in one thread).
template <class F>
void host_for(const char* label, std::size_t count, const F& f) {
  Kokkos::parallel_for(
      label,
      Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace, Kokkos::IndexType<std::int64_t>>(
          0, static_cast<std::int64_t>(count)),
      [=](std::int64_t i) { f(static_cast<std::size_t>(i)); });
  Kokkos::DefaultHostExecutionSpace().fence();
}

// dst[i] = the file element i of `dtype` at `src`, in T (through double, as the old path did).
template <class T>
void decode(const unsigned char* src, const std::string& dtype, T* dst, std::size_t count) {
  const std::size_t item_size = npy::Header{{}, dtype}.item_size();
  host_for("dilated::tools::decode_npy", count, [=](std::size_t i) {
    dst[i] = static_cast<T>(npy::Impl::element_to_double(src, item_size, i));
  });
}

// The file bytes of `dtype` at `dst` for src[0 .. count) (widened to double, rounded once).
template <class T>
void encode(const T* src, const std::string& dtype, unsigned char* dst, std::size_t count) {
  const int kind = dtype == "<f2" ? 2 : dtype == "<f4" ? 4 : 8;
  host_for("dilated::tools::encode_npy", count, [=](std::size_t i) {
    const double x = dilated::Impl::to_double(src[i]);
    if (kind == 8) {
      std::memcpy(dst + 8 * i, &x, 8);
    } else if (kind == 4) {
      const float f = static_cast<float>(x);
      std::memcpy(dst + 4 * i, &f, 4);
    } else {
      const std::uint16_t h = npy::Impl::half_bits_from_double(x);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  });
}

template <class View>
using FlatView = Kokkos::View<typename View::non_const_value_type*, typename View::memory_space,
                              Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class T>
using HostChunk = Kokkos::View<T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

template <class View>
FlatView<View> flat(const View& view) {
  if (!view.span_is_contiguous() || view.span() != view.size()) {
    throw std::logic_error("dilated::tools: .npy streaming needs a dense View");
  }
  return FlatView<View>(view.data(), view.size());
}

}  // namespace Impl

// Reads `file`'s data into the dense View `view` of the same element count, a chunk at a time:
// straight into the View's memory when the host can reach it, else through one staging chunk
// copied to the device; the file's bytes are read into the staging chunk itself when they are
// already the storage type's. Throws npy::FormatError when the file ends early (it shrank since
// open_npy).
template <class View>
void read_into(const NpyFile& file, const View& view) {
  using T = typename View::non_const_value_type;
  constexpr bool host =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename View::memory_space>::accessible;
  dilated::Impl::ScopedRegion region("dilated::tools::read_into");
  if (view.size() != file.header.size()) {
    throw std::logic_error("dilated::tools::read_into: " + file.path + " holds " +
                           std::to_string(file.header.size()) + " elements, the View " +
                           std::to_string(view.size()));
  }
  const auto device = Impl::flat(view);
  const std::string& dtype = file.header.dtype;
  const std::size_t item = file.header.item_size();
  const bool direct = same_bits<T>(dtype);
  std::vector<unsigned char> raw(direct ? 0 : std::min(stream_chunk, view.size()) * item);
  std::vector<T> staging(host ? 0 : std::min(stream_chunk, view.size()));
  std::ifstream in(file.path, std::ios::binary);
  in.seekg(file.data_offset);
  if (!in) throw npy::FormatError(file.path + ": cannot open for reading");
  for (std::size_t first = 0; first < view.size(); first += stream_chunk) {
    const std::size_t count = std::min(stream_chunk, view.size() - first);
    T* values = host ? view.data() + first : staging.data();
    char* bytes = direct ? reinterpret_cast<char*>(values) : reinterpret_cast<char*>(raw.data());
    in.read(bytes, static_cast<std::streamsize>(count * item));
    if (static_cast<std::size_t>(in.gcount()) != count * item) {
      throw npy::FormatError(file.path + ": truncated data: the file ended after " +
                             std::to_string(first * item + in.gcount()) + " of " +
                             std::to_string(file.header.data_bytes()) + " data bytes");
    }
    if (!direct) Impl::decode(raw.data(), dtype, values, count);
    if constexpr (!host) {
      Kokkos::deep_copy(Kokkos::subview(device, Kokkos::make_pair(first, first + count)),
                        Impl::HostChunk<T>(staging.data(), count));
    }
  }
}

// Writes the dense View `view` to `path` as a .npy of `dtype` ("<f2", "<f4" or "<f8"), a chunk at
// a time through one staging chunk (none when the host reaches the View and its storage is the
// file's), into a temporary file renamed into place when whole (npy::write_streamed).
template <class View>
void write_from(const std::string& path, const View& view, const std::string& dtype) {
  using T = typename View::non_const_value_type;
  constexpr bool host =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename View::memory_space>::accessible;
  dilated::Impl::ScopedRegion region("dilated::tools::write_from");
  const auto device = Impl::flat(view);
  std::vector<std::size_t> shape;
  for (unsigned r = 0; r < View::rank; ++r)
    shape.push_back(view.extent(r));
  npy::write_streamed(path, shape, dtype, [&](std::ostream& out) {
    const bool direct = same_bits<T>(dtype);
    const std::size_t item = npy::Header{{}, dtype}.item_size();
    std::vector<T> staging(host ? 0 : std::min(stream_chunk, view.size()));
    std::vector<unsigned char> raw(direct ? 0 : std::min(stream_chunk, view.size()) * item);
    for (std::size_t first = 0; first < view.size() && out; first += stream_chunk) {
      const std::size_t count = std::min(stream_chunk, view.size() - first);
      const T* values = view.data() + first;
      if constexpr (!host) {
        Kokkos::deep_copy(Impl::HostChunk<T>(staging.data(), count),
                          Kokkos::subview(device, Kokkos::make_pair(first, first + count)));
        values = staging.data();
      }
      if (direct) {
        out.write(reinterpret_cast<const char*>(values),
                  static_cast<std::streamsize>(count * item));
      } else {
        Impl::encode(values, dtype, raw.data(), count);
        out.write(reinterpret_cast<const char*>(raw.data()),
                  static_cast<std::streamsize>(count * item));
      }
    }
  });
}

}  // namespace dilated::tools

#endif  // DILATED_NPY_STREAM_HPP
