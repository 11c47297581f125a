// libFuzzer target: dilated::npy::read on arbitrary bytes. Every input must either parse into an
// array whose bytes match its shape and dtype, or throw dilated::npy::FormatError; any other
// exception, a crash, a sanitizer finding or an allocation beyond what the bytes hold is a bug.
#include <Dilated_Npy.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size), std::ios::binary);
  dilated::npy::Array array;
  try {
    array = dilated::npy::read(in, "fuzz.npy");
  } catch (const dilated::npy::FormatError&) {
    return 0;  // rejected with a message: what a malformed file must do
  }
  // Accepted: the array holds exactly shape x item size bytes, all of them from the input.
  const bool dtype_ok = array.dtype == "<f2" || array.dtype == "<f4" || array.dtype == "<f8";
  if (!dtype_ok || array.bytes.size() != array.size() * array.item_size() ||
      array.bytes.size() > size || array.to_double().size() != array.size()) {
    std::abort();
  }
  return 0;
}
