// Reading and writing NumPy .npy files (format versions 1, 2 and 3; little-endian float16,
// float32 and float64 in C order), so tests, tools and PyTorch users exchange arrays.
// A malformed file throws dilated::npy::FormatError naming the file and what is wrong.
#ifndef DILATED_NPY_HPP
#define DILATED_NPY_HPP

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <istream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace dilated::npy {

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
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
// of 64 bytes) and `bytes` raw data bytes. write() builds the dictionary; tests write malformed
// ones through this too.
inline void write_format1(const std::string& path, std::string dict, const void* data,
                          std::size_t bytes) {
  // magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  // Written whole to a temporary in the same folder, then renamed over `path` (atomic on POSIX):
  // a write that is interrupted or fails never leaves a truncated file at `path`, and an old
  // file there stays as it was until the new one is complete.
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
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    out.close();
    if (!out) {
      std::remove(temporary.c_str());
      throw FormatError(path + ": write failed");
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw FormatError(path + ": cannot rename " + temporary + " to it");
  }
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

}  // namespace Impl

inline std::vector<double> Array::to_double() const {
  std::vector<double> values(size());
  const unsigned char* p = bytes.data();
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == "<f8") {
      double x;
      std::memcpy(&x, p + 8 * i, 8);
      values[i] = x;
    } else if (dtype == "<f4") {
      float x;
      std::memcpy(&x, p + 4 * i, 4);
      values[i] = x;
    } else {
      std::uint16_t x;
      std::memcpy(&x, p + 2 * i, 2);
      values[i] = Impl::half_bits_to_float(x);
    }
  }
  return values;
}

// Reads a .npy file's bytes from `in` (a binary stream, positioned at the magic string);
// `path` names it in errors. Throws FormatError when the bytes are not .npy, truncated, Fortran
// ordered, big-endian or of another dtype than float16/32/64. The fuzz target fuzz/fuzz_npy.cpp
// calls this on bytes in memory.
inline Array read(std::istream& in, const std::string& path) {
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
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (static_cast<std::uint32_t>(in.gcount()) != header_len) {
    throw FormatError(path + ": truncated .npy header");
  }
  Array array;
  array.dtype = Impl::header_value(header, "descr", path);
  if (array.dtype == "<f8" || array.dtype == "<f4" || array.dtype == "<f2") {
    // supported
  } else {
    throw FormatError(path + ": dtype '" + array.dtype +
                      "' is not supported (need little-endian float16, float32 or float64)");
  }
  if (Impl::header_value(header, "fortran_order", path) != "False") {
    throw FormatError(path + ": Fortran-ordered arrays are not supported (need C order)");
  }
  array.shape = Impl::parse_shape(Impl::header_value(header, "shape", path), path);
  // Compare with what the file holds before allocating: a corrupt shape must not allocate.
  std::size_t expected = array.item_size();
  for (const std::size_t extent : array.shape) {
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
  std::string dict = std::string("{'descr': '") + (sizeof(T) == 8 ? "<f8" : "<f4") +
                     "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dict += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  }
  dict += shape.size() == 1 ? ",), }" : "), }";  // a 1-tuple needs its comma
  const std::size_t count =
      std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  Impl::write_format1(path, dict, data, count * sizeof(T));
}

}  // namespace dilated::npy

#endif  // DILATED_NPY_HPP
