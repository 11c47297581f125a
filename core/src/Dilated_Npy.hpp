// Reading and writing NumPy .npy files (format versions 1, 2 and 3; little-endian float16,
// float32 and float64 in C order), so tests, tools and PyTorch users exchange arrays.
// A malformed file throws dilated::npy::FormatError naming the file and what is wrong.
// Whole arrays: read / write. Arrays too large to hold twice on the host (the command-line tool
// at billions of elements): read_header, then the data from the stream a piece at a time, and
// write_streamed, which takes the data bytes a piece at a time.
#ifndef DILATED_NPY_HPP
#define DILATED_NPY_HPP

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <istream>
#include <ostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dilated::npy {

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a .npy file's header says: the shape and dtype ("<f2", "<f4" or "<f8") of the data that
// follows it.
struct Header {
  std::vector<std::size_t> shape;
  std::string dtype;

  std::size_t size() const {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  }
  std::size_t item_size() const { return dtype == "<f2" ? 2 : dtype == "<f4" ? 4 : 8; }
  std::size_t data_bytes() const { return size() * item_size(); }
};

// An array as stored: its shape, its dtype ("<f2", "<f4" or "<f8") and raw little-endian bytes.
struct Array {
  std::vector<std::size_t> shape;
  std::string dtype;
  std::vector<unsigned char> bytes;

  std::size_t size() const {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  }
  std::size_t item_size() const { return dtype == "<f2" ? 2 : dtype == "<f4" ? 4 : 8; }

  // The values in C order, converted to double (exact for every supported dtype).
  std::vector<double> to_double() const;
};

namespace Impl {

// IEEE binary16 -> float, exact for every value (subnormals, infinities and NaN included).
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// double (or float, widened exactly) -> IEEE binary16 bits, rounded to nearest, ties to even,
// once (no double rounding through float): overflow to infinity, subnormals, signed zeros and
// NaN (quiet) as NumPy's astype(float16) gives them. Powers of two scale exactly, so the only
// rounding is std::nearbyint's (the default rounding mode, to nearest even).
inline std::uint16_t half_bits_from_double(double x) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  const double a = std::fabs(x);
  if (std::isnan(x)) return sign | 0x7e00u;
  if (a >= 65520.0) return sign | 0x7c00u;  // 65520: halfway to 65536, which is even: infinity
  if (a < std::ldexp(1.0, -14)) {
    // Subnormal: units of 2^-24; 1024 units round up into the smallest normal, whose bits
    // 0x0400 are exactly 1024.
    return static_cast<std::uint16_t>(
        sign | static_cast<std::uint16_t>(std::nearbyint(std::ldexp(a, 24))));
  }
  int e2 = 0;
  std::frexp(a, &e2);           // a = m 2^e2, m in [0.5, 1): the leading bit is 2^(e2 - 1)
  const int exponent = e2 - 1;  // -14 .. 15
  auto mantissa = static_cast<std::uint32_t>(std::nearbyint(std::ldexp(a, 10 - exponent)));
  int biased = exponent + 15;
  if (mantissa == 2048) {  // rounded up to the next power of two
    mantissa = 1024;
    ++biased;
  }
  if (biased >= 31) return sign | 0x7c00u;
  return static_cast<std::uint16_t>(sign | (biased << 10) | (mantissa - 1024));
}

inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The value that follows 'key': in the header dictionary, up to the next ',' at depth 0.
inline std::string header_value(const std::string& header, const std::string& key,
                                const std::string& path) {
  const auto at = header.find("'" + key + "'");
  if (at == std::string::npos) throw FormatError(path + ": .npy header has no '" + key + "'");
  auto pos = header.find(':', at);
  if (pos == std::string::npos) throw FormatError(path + ": malformed .npy header");
  int depth = 0;
  std::string value;
  for (++pos; pos < header.size(); ++pos) {
    const char c = header[pos];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
    value += c;
  }
  const auto first = value.find_first_not_of(" \t'\"");
  const auto last = value.find_last_not_of(" \t'\"");
  return first == std::string::npos ? std::string() : value.substr(first, last - first + 1);
}

inline std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// "(2, 64, 4, 8)", "(5,)" or "()" -> lengths.
inline std::vector<std::size_t> parse_shape(const std::string& text, const std::string& path) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') {
    throw FormatError(path + ": .npy shape '" + text + "' is not a tuple");
  }
  std::vector<std::size_t> shape;
  std::size_t start = 1;
  while (start < text.size() - 1) {
    auto end = text.find(',', start);
    if (end == std::string::npos || end > text.size() - 1) end = text.size() - 1;
    const std::string item = trim(text.substr(start, end - start));
    if (!item.empty()) {
      if (item.find_first_not_of("0123456789") != std::string::npos) {
        throw FormatError(path + ": .npy shape entry '" + item + "' is not a length");
      }
      // Digits only, but maybe more than a size_t holds (std::stoull would throw
      // std::out_of_range, not a FormatError): a length beyond 2^62 is refused here, the
      // product of the lengths later.
      std::size_t length = 0;
      for (const char digit : item) {
        if (length > ((std::size_t{1} << 62) - 9) / 10) {
          throw FormatError(path + ": .npy shape entry '" + item + "' is too large");
        }
        length = 10 * length + static_cast<std::size_t>(digit - '0');
      }
      shape.push_back(length);
    }
    start = end + 1;
  }
  return shape;
}

// A format 1.0 file: the header dictionary `dict` (padded so that the data starts at a multiple
// of 64 bytes) and `bytes` data bytes, which `write_data(out)` writes in order (a piece at a
// time if it likes; a different count is a FormatError). write() and write_streamed() build the
// dictionary; tests write malformed ones through this too.
inline void write_format1(const std::string& path, std::string dict, std::size_t bytes,
                          const std::function<void(std::ostream&)>& write_data) {
  // magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  // Written whole to a temporary in the same folder, then renamed over `path` (atomic on POSIX):
  // a write that is interrupted or fails (or whose write_data throws) never leaves a truncated
  // file at `path`, and an old file there stays as it was until the new one is complete.
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw FormatError(path + ": cannot open for writing (" + temporary + ")");
    const unsigned char preamble[10] = {0x93,
                                        'N',
                                        'U',
                                        'M',
                                        'P',
                                        'Y',
                                        1,
                                        0,
                                        static_cast<unsigned char>(dict.size() & 0xff),
                                        static_cast<unsigned char>(dict.size() >> 8)};
    out.write(reinterpret_cast<const char*>(preamble), 10);
    out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
    const auto data_begin = out.tellp();
    try {
      write_data(out);
    } catch (...) {
      out.close();
      std::remove(temporary.c_str());
      throw;
    }
    const bool whole = out && out.tellp() - data_begin == static_cast<std::streamoff>(bytes);
    out.close();
    if (!out || !whole) {
      std::remove(temporary.c_str());
      throw FormatError(
          path + (whole ? ": write failed"
                        : ": write failed: the data is not " + std::to_string(bytes) + " bytes"));
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw FormatError(path + ": cannot rename " + temporary + " to it");
  }
}

// The same with the data bytes in memory.
inline void write_format1(const std::string& path, std::string dict, const void* data,
                          std::size_t bytes) {
  write_format1(path, std::move(dict), bytes, [&](std::ostream& out) {
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  });
}

// The header dictionary of a C-ordered array of `dtype` and `shape`.
inline std::string header_dict(const std::string& dtype, const std::vector<std::size_t>& shape) {
  std::string dict = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dict += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  }
  return dict + (shape.size() == 1 ? ",), }" : "), }");  // a 1-tuple needs its comma
}

// The bytes from `in`'s position to its end (the position is kept), so that no length read
// from a file is allocated before the file is known to hold it.
inline std::size_t remaining_bytes(std::istream& in, const std::string& path) {
  const auto here = in.tellg();
  in.seekg(0, std::ios::end);
  const auto end = in.tellg();
  in.seekg(here);
  if (here < 0 || end < here || !in) throw FormatError(path + ": cannot tell the file's size");
  return static_cast<std::size_t>(end - here);
}

// Element i of little-endian float16 / 32 / 64 data (`item_size` 2, 4 or 8 bytes), widened to
// double (exactly). What Array::to_double and the tool's streaming reader decode with.
inline double element_to_double(const unsigned char* data, std::size_t item_size, std::size_t i) {
  if (item_size == 8) {
    double x;
    std::memcpy(&x, data + 8 * i, 8);
    return x;
  }
  if (item_size == 4) {
    float x;
    std::memcpy(&x, data + 4 * i, 4);
    return x;
  }
  std::uint16_t x;
  std::memcpy(&x, data + 2 * i, 2);
  return half_bits_to_float(x);
}

}  // namespace Impl

inline std::vector<double> Array::to_double() const {
  std::vector<double> values(size());
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = Impl::element_to_double(bytes.data(), item_size(), i);
  return values;
}

// Reads a .npy header from `in` (a binary stream, positioned at the magic string) and leaves
// `in` at the first data byte; `path` names the file in errors. Throws FormatError when the bytes
// are not .npy, Fortran ordered, big-endian, of another dtype than float16/32/64, or when the
// stream holds fewer data bytes than the shape needs (checked before anything is allocated).
inline Header read_header(std::istream& in, const std::string& path) {
  if (!Impl::host_is_little_endian()) throw FormatError("dilated::npy needs a little-endian host");
  char magic[8] = {};
  in.read(magic, 8);
  if (in.gcount() != 8 || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw FormatError(path + ": not a .npy file (bad magic string)");
  }
  const int major = static_cast<unsigned char>(magic[6]);
  if (major < 1 || major > 3) {
    throw FormatError(path + ": unsupported .npy format version " + std::to_string(major));
  }
  std::uint32_t header_len = 0;
  unsigned char len_bytes[4] = {};
  const int len_size = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(len_bytes), len_size);
  if (in.gcount() != len_size) throw FormatError(path + ": truncated .npy header");
  for (int i = len_size - 1; i >= 0; --i)
    header_len = header_len * 256 + len_bytes[i];
  // A version 2 or 3 header length goes up to 4 GiB: check it against the file first.
  const std::size_t after_length = Impl::remaining_bytes(in, path);
  if (header_len > after_length) {
    throw FormatError(path + ": truncated .npy header: " + std::to_string(header_len) +
                      " bytes announced, " + std::to_string(after_length) + " in the file");
  }
  std::string text(header_len, '\0');
  in.read(text.data(), header_len);
  if (static_cast<std::uint32_t>(in.gcount()) != header_len) {
    throw FormatError(path + ": truncated .npy header");
  }
  Header header;
  header.dtype = Impl::header_value(text, "descr", path);
  if (header.dtype == "<f8" || header.dtype == "<f4" || header.dtype == "<f2") {
    // supported
  } else {
    throw FormatError(path + ": dtype '" + header.dtype +
                      "' is not supported (need little-endian float16, float32 or float64)");
  }
  if (Impl::header_value(text, "fortran_order", path) != "False") {
    throw FormatError(path + ": Fortran-ordered arrays are not supported (need C order)");
  }
  header.shape = Impl::parse_shape(Impl::header_value(text, "shape", path), path);
  // Compare with what the file holds before allocating: a corrupt shape must not allocate.
  std::size_t expected = header.item_size();
  for (const std::size_t extent : header.shape) {
    if (extent != 0 && expected > (std::size_t{1} << 62) / extent) {
      throw FormatError(path + ": .npy shape is too large");
    }
    expected *= extent;
  }
  const std::size_t available = Impl::remaining_bytes(in, path);
  if (available < expected) {
    throw FormatError(path + ": truncated data: expected " + std::to_string(expected) +
                      " bytes, found " + std::to_string(available));
  }
  return header;
}

// Reads a .npy file's bytes from `in` (a binary stream, positioned at the magic string);
// `path` names it in errors. Throws FormatError when the bytes are not .npy, truncated, Fortran
// ordered, big-endian or of another dtype than float16/32/64. The fuzz target fuzz/fuzz_npy.cpp
// calls this on bytes in memory.
inline Array read(std::istream& in, const std::string& path) {
  Header header = read_header(in, path);
  const std::size_t expected = header.data_bytes();
  Array array;
  array.shape = std::move(header.shape);
  array.dtype = std::move(header.dtype);
  array.bytes.resize(expected);
  in.read(reinterpret_cast<char*>(array.bytes.data()), static_cast<std::streamsize>(expected));
  if (static_cast<std::size_t>(in.gcount()) != expected) {
    throw FormatError(path + ": truncated data: expected " + std::to_string(expected) +
                      " bytes, found " + std::to_string(in.gcount()));
  }
  return array;
}

// Reads `path`. Throws FormatError when the file is missing, not .npy, truncated, Fortran
// ordered, big-endian or of another dtype than float16/32/64.
inline Array read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(path + ": cannot open for reading");
  return read(in, path);
}

// Writes float64 (T = double) or float32 (T = float) data of `shape`, C order, format 1.0.
template <class T>
void write(const std::string& path, const std::vector<std::size_t>& shape, const T* data) {
  static_assert(std::is_same_v<T, double> || std::is_same_v<T, float>,
                "dilated::npy::write: writes float or double data");
  if (!Impl::host_is_little_endian()) throw FormatError("dilated::npy needs a little-endian host");
  const std::size_t count =
      std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  Impl::write_format1(path, Impl::header_dict(sizeof(T) == 8 ? "<f8" : "<f4", shape), data,
                      count * sizeof(T));
}

// Writes an array of `shape` in `dtype` ("<f2", "<f4" or "<f8"), C order, format 1.0, whose
// little-endian data bytes `write_data(out)` writes in order, a piece at a time if it likes:
// an array larger than the host's memory is written without being whole anywhere but on the
// device. The same temporary file and rename as write(); a data byte count other than the
// shape's is a FormatError (nothing is left at `path`).
inline void write_streamed(const std::string& path, const std::vector<std::size_t>& shape,
                           const std::string& dtype,
                           const std::function<void(std::ostream&)>& write_data) {
  if (!Impl::host_is_little_endian()) throw FormatError("dilated::npy needs a little-endian host");
  if (dtype != "<f2" && dtype != "<f4" && dtype != "<f8") {
    throw FormatError(path + ": cannot write dtype '" + dtype + "' (float16, 32 or 64 only)");
  }
  const Header header{shape, dtype};
  Impl::write_format1(path, Impl::header_dict(dtype, shape), header.data_bytes(), write_data);
}

}  // namespace dilated::npy

#endif  // DILATED_NPY_HPP
