// A fresh folder under the system's temporary directory for a test's files. The name carries a
// random number: ctest runs the Serial, OpenMP and CUDA binaries of one test at the same time,
// and a fixed name let two of them write (and rename) into the same folder.
#ifndef DILATED_TEST_SCRATCH_DIRECTORY_HPP
#define DILATED_TEST_SCRATCH_DIRECTORY_HPP

#include <filesystem>
#include <random>
#include <string>

namespace dilated::testing {

inline std::filesystem::path scratch_directory(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("dilated_test_" + std::to_string(std::random_device{}()) + "_" + name);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace dilated::testing

#endif  // DILATED_TEST_SCRATCH_DIRECTORY_HPP
