// .npy I/O: round trips, the formats NumPy writes (versions 1-3, float16/32/64, 0-d and 1-d
// shapes), and clear errors for files that are not what they claim.
#include <Dilated_Npy.hpp>
#include <Dilated_ScratchDirectory.hpp>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

using Catch::Matchers::ContainsSubstring;
namespace npy = dilated::npy;

namespace {

// A scratch file in this run's own temporary folder (the build folder may not exist where
// the binary runs).
std::string tmp(const std::string& name) {
  static const std::filesystem::path dir = dilated::testing::scratch_directory("npy");
  return (dir / name).string();
}

// Writes a file by hand: magic, version, header length, header, data.
void write_raw(const std::string& path, int major, const std::string& dict,
               const std::vector<unsigned char>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY", 6);
  out.put(static_cast<char>(major));
  out.put(0);
  const std::uint32_t len = dict.size();
  for (int i = 0; i < (major == 1 ? 2 : 4); ++i)
    out.put(static_cast<char>((len >> (8 * i)) & 0xff));
  out.write(dict.data(), dict.size());
  out.write(reinterpret_cast<const char*>(data.data()), data.size());
}

}  // namespace

TEST_CASE("npy: double and float round trips are exact", "[npy]") {
  const std::vector<double> values = {1.5, -2.25, 3e-300, 1e300, 0.0, -0.0, 7, 8, 9, 10, 11, 12};
  npy::write(tmp("d.npy"), {2, 3, 2}, values.data());
  const auto a = npy::read(tmp("d.npy"));
  REQUIRE(a.dtype == "<f8");
  REQUIRE(a.shape == std::vector<std::size_t>{2, 3, 2});
  REQUIRE(a.to_double() == values);

  const std::vector<float> f = {0.1f, -1e-30f, 3.5f};
  npy::write(tmp("f.npy"), {3}, f.data());
  const auto b = npy::read(tmp("f.npy"));
  REQUIRE(b.dtype == "<f4");
  REQUIRE(b.shape == std::vector<std::size_t>{3});
  const auto bd = b.to_double();
  for (int i = 0; i < 3; ++i)
    REQUIRE(bd[i] == static_cast<double>(f[i]));

  // The header is padded so the data starts on a 64-byte boundary, as NumPy does.
  std::ifstream in(tmp("f.npy"), std::ios::binary | std::ios::ate);
  REQUIRE((static_cast<std::size_t>(in.tellg()) - 3 * sizeof(float)) % 64 == 0);
}

TEST_CASE("npy: reads float16, versions 2 and 3, and 0-d arrays", "[npy]") {
  // float16 bits: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, smallest subnormal 0x0001.
  write_raw(tmp("h.npy"), 2, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }\n",
            {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00});
  const auto h = npy::read(tmp("h.npy")).to_double();
  REQUIRE(h == std::vector<double>{1.0, -2.0, 65504.0, std::ldexp(1.0, -24)});
  write_raw(tmp("s.npy"), 3, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n",
            {0, 0, 0, 0, 0, 0, 0xf0, 0x3f});
  const auto s = npy::read(tmp("s.npy"));
  REQUIRE(s.shape.empty());
  REQUIRE(s.to_double() == std::vector<double>{1.0});
}

TEST_CASE("npy: malformed files throw FormatError saying what is wrong", "[npy][errors]") {
  REQUIRE_THROWS_WITH(npy::read(tmp("missing.npy")), ContainsSubstring("cannot open"));
  { std::ofstream(tmp("text.npy")) << "hello, not numpy"; }
  REQUIRE_THROWS_WITH(npy::read(tmp("text.npy")), ContainsSubstring("bad magic"));
  write_raw(tmp("int.npy"), 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n",
            {1, 0, 0, 0, 0, 0, 0, 0});
  REQUIRE_THROWS_WITH(npy::read(tmp("int.npy")), ContainsSubstring("dtype '<i8' is not supported"));
  write_raw(tmp("big.npy"), 1, "{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }\n",
            {0, 0, 0, 0, 0, 0, 0xf0, 0x3f});
  REQUIRE_THROWS_WITH(npy::read(tmp("big.npy")), ContainsSubstring("dtype '>f8'"));
  write_raw(tmp("fortran.npy"), 1, "{'descr': '<f8', 'fortran_order': True, 'shape': (1,), }\n",
            {0, 0, 0, 0, 0, 0, 0xf0, 0x3f});
  REQUIRE_THROWS_WITH(npy::read(tmp("fortran.npy")), ContainsSubstring("Fortran-ordered"));
  write_raw(tmp("short.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n",
            {0, 0, 0, 0, 0, 0, 0xf0, 0x3f});
  REQUIRE_THROWS_WITH(npy::read(tmp("short.npy")),
                      ContainsSubstring("truncated data: expected 48 bytes, found 8"));
  write_raw(tmp("huge.npy"), 1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n", {});
  REQUIRE_THROWS_WITH(npy::read(tmp("huge.npy")), ContainsSubstring("too large"));
  write_raw(tmp("badshape.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, x), }\n",
            {});
  REQUIRE_THROWS_WITH(npy::read(tmp("badshape.npy")), ContainsSubstring("'x' is not a length"));
  {
    std::ofstream out(tmp("cut.npy"), std::ios::binary);
    out.write("\x93NUMPY\x01\x00\x40", 9);
  }
  REQUIRE_THROWS_WITH(npy::read(tmp("cut.npy")), ContainsSubstring("truncated .npy header"));
}

// Inputs the fuzz target fuzz/fuzz_npy.cpp found or that it guards (kept in fuzz/corpus/npy/):
// a length read from the file is checked against the file before anything is allocated, and a
// shape entry too long for a size_t is a FormatError, not std::out_of_range from std::stoull.
TEST_CASE("npy: lengths in a header are checked against the file before allocating",
          "[npy][errors][fuzz]") {
  // Version 3: a 4-byte header length of 0xfffffff0 (4 GiB) followed by 7 bytes.
  const std::string lying("\x93NUMPY\x03\x00\xf0\xff\xff\xff{'descr", 19);
  std::istringstream in(lying, std::ios::binary);
  REQUIRE_THROWS_WITH(npy::read(in, "lying.npy"),
                      ContainsSubstring("lying.npy: truncated .npy header: 4294967280 bytes "
                                        "announced, 7 in the file"));
  // What the fuzzer found: version 3, the header length is 0x2734663d.
  {
    std::ofstream out(tmp("fuzz_header.npy"), std::ios::binary);
    out << std::string("\x93NUMPY\x03\x00=f4',   0      \n", 24);
  }
  REQUIRE_THROWS_WITH(npy::read(tmp("fuzz_header.npy")), ContainsSubstring("bytes announced"));
  write_raw(tmp("long_entry.npy"), 1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }\n",
            {});
  REQUIRE_THROWS_AS(npy::read(tmp("long_entry.npy")), npy::FormatError);
  REQUIRE_THROWS_WITH(npy::read(tmp("long_entry.npy")),
                      ContainsSubstring("shape entry '99999999999999999999999' is too large"));
  // The largest entry that fits is still refused by the product check, not earlier.
  write_raw(tmp("big_entry.npy"), 1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387903,), }\n", {});
  REQUIRE_THROWS_WITH(npy::read(tmp("big_entry.npy")), ContainsSubstring("too large"));
}

TEST_CASE("npy: reading from a stream equals reading the file", "[npy]") {
  const std::vector<float> values = {1.f, -2.f, 0.5f, 3.f, 4.f, 5.f};
  npy::write(tmp("stream.npy"), {2, 3}, values.data());
  std::ifstream file(tmp("stream.npy"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::istringstream in(bytes, std::ios::binary);
  const auto a = npy::read(in, "in memory");
  const auto b = npy::read(tmp("stream.npy"));
  REQUIRE(a.shape == b.shape);
  REQUIRE(a.dtype == b.dtype);
  REQUIRE(a.bytes == b.bytes);
  // Data cut short: the message names the stream.
  std::istringstream cut(bytes.substr(0, bytes.size() - 4), std::ios::binary);
  REQUIRE_THROWS_WITH(npy::read(cut, "in memory"),
                      ContainsSubstring("in memory: truncated data: expected 24 bytes, found 20"));
}

TEST_CASE("npy: a write killed midway leaves the old file whole", "[npy][files]") {
  const std::string path = tmp("killed.npy"), temporary = path + ".tmp";
  const std::vector<double> old_values(1000, 1.5);
  npy::write(path, {old_values.size()}, old_values.data());
  // 100 MB: a write that takes long enough to be caught with part of it on disk.
  const std::vector<double> big(12'500'000, 2.5);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    npy::write(path, {big.size()}, big.data());
    _exit(0);
  }
  // Kill the writer as soon as part of the new file is on disk (or let it finish: then the new
  // file must be whole).
  bool killed = false;
  int status = 0;
  for (int i = 0; i < 20000; ++i) {
    std::error_code error;
    const auto size = std::filesystem::file_size(temporary, error);
    if (!error && size > 0 && size < big.size() * sizeof(double)) {
      kill(child, SIGKILL);
      killed = true;
      break;
    }
    if (waitpid(child, &status, WNOHANG) == child) break;
    usleep(500);
  }
  if (killed) waitpid(child, &status, 0);
  INFO("killed midway: " << killed);
  const npy::Array a = npy::read(path);  // never a truncated file: this would throw
  if (killed) {
    CHECK(a.shape == std::vector<std::size_t>{old_values.size()});
    CHECK(a.to_double() == old_values);
  } else {
    CHECK(a.shape == std::vector<std::size_t>{big.size()});
  }
  std::filesystem::remove(temporary);
}

// The streaming pieces the command-line tool reads and writes large arrays with (issue 20).
TEST_CASE("npy: read_header leaves the stream at the data; write_streamed writes in pieces",
          "[npy][stream]") {
  const std::vector<float> values = {1.f, -2.f, 0.5f, 3.f, 4.f, 5.f};
  npy::write_streamed(tmp("pieces.npy"), {2, 3}, "<f4", [&](std::ostream& out) {
    for (const float x : values)  // one element a piece
      out.write(reinterpret_cast<const char*>(&x), sizeof x);
  });
  std::ifstream in(tmp("pieces.npy"), std::ios::binary);
  const npy::Header header = npy::read_header(in, "pieces.npy");
  REQUIRE(header.shape == std::vector<std::size_t>{2, 3});
  REQUIRE(header.dtype == "<f4");
  REQUIRE(header.data_bytes() == 24);
  std::vector<float> data(6);
  in.read(reinterpret_cast<char*>(data.data()), 24);
  REQUIRE(in.gcount() == 24);
  REQUIRE(data == values);
  REQUIRE(npy::read(tmp("pieces.npy")).to_double() ==
          std::vector<double>(values.begin(), values.end()));
}

TEST_CASE("npy: write_streamed leaves no file when its data is short or its writer throws",
          "[npy][stream][files]") {
  const std::string path = tmp("streamed.npy");
  const std::vector<double> old_values = {7, 8};
  npy::write(path, {2}, old_values.data());
  const auto write_bytes = [](std::size_t bytes) {
    return [bytes](std::ostream& out) { out.write(std::string(bytes, '\0').data(), bytes); };
  };
  REQUIRE_THROWS_WITH(npy::write_streamed(path, {4}, "<f2", write_bytes(6)),
                      ContainsSubstring("the data is not 8 bytes"));
  REQUIRE_THROWS_WITH(npy::write_streamed(path, {4}, "<f2", write_bytes(10)),
                      ContainsSubstring("the data is not 8 bytes"));
  REQUIRE_THROWS_WITH(
      npy::write_streamed(path, {4}, "<f2",
                          [](std::ostream&) { throw std::runtime_error("device"); }),
      ContainsSubstring("device"));
  REQUIRE_THROWS_WITH(npy::write_streamed(path, {4}, "<i4", write_bytes(16)),
                      ContainsSubstring("cannot write dtype '<i4'"));
  CHECK(npy::read(path).to_double() == old_values);  // the old file, whole
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
  npy::write_streamed(path, {4}, "<f2", write_bytes(8));
  CHECK(npy::read(path).to_double() == std::vector<double>(4, 0.0));
}

TEST_CASE("npy: half_bits_from_double rounds once to nearest even, as NumPy's astype(float16)",
          "[npy][stream]") {
  using npy::Impl::half_bits_from_double;
  using npy::Impl::half_bits_to_float;
  // Every half value but NaN converts back to its own bits; NaN to the quiet NaN of its sign.
  // (A signalling NaN pattern is not widened here: float -> double raises FE_INVALID, which the
  // test main traps.)
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    if ((bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu) != 0) continue;  // NaN
    if (half_bits_from_double(half_bits_to_float(bits)) != bits) FAIL("half bits " << h);
  }
  CHECK(half_bits_from_double(std::nan("")) == 0x7e00);
  CHECK(half_bits_from_double(-std::nan("")) == 0xfe00);
  // Between neighbours a and b (bits h, h + 1, both finite and of the same sign): below the
  // midpoint to a, above it to b, at it to the even one of the two.
  for (std::uint32_t h = 0; h < 0x7bff; ++h) {
    const double a = half_bits_to_float(static_cast<std::uint16_t>(h));
    const double b = half_bits_to_float(static_cast<std::uint16_t>(h + 1));
    const double mid = 0.5 * (a + b), step = (b - a) * 1e-6;
    const auto even = static_cast<std::uint16_t>(h % 2 == 0 ? h : h + 1);
    if (half_bits_from_double(mid - step) != h || half_bits_from_double(mid + step) != h + 1 ||
        half_bits_from_double(mid) != even || half_bits_from_double(-mid) != (even | 0x8000u)) {
      FAIL("between half bits " << h << " and " << h + 1);
    }
  }
  // Overflow: 65504 is the largest half; from the midpoint to 65536 (65520) on, infinity.
  CHECK(half_bits_from_double(65519.99) == 0x7bff);
  CHECK(half_bits_from_double(65520.0) == 0x7c00);
  CHECK(half_bits_from_double(-1e300) == 0xfc00);
  CHECK(half_bits_from_double(INFINITY) == 0x7c00);
  // Below half the smallest subnormal (2^-25) to zero, signed; at it, to even (zero).
  CHECK(half_bits_from_double(std::ldexp(1.0, -25)) == 0x0000);
  CHECK(half_bits_from_double(std::ldexp(1.0, -25) * 1.0001) == 0x0001);
  CHECK(half_bits_from_double(-1e-300) == 0x8000);
  // Once, not through float: 1 + 2^-11 + 2^-40 is above the midpoint of 1 and 1 + 2^-10, but
  // rounds to the midpoint in float, which would then round to 1 (even).
  CHECK(half_bits_from_double(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3c01);
}
