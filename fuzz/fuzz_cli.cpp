// libFuzzer target: the dilated-attention tool's whole `main` (command line, checks, .npy reads,
// a tiny run, .npy writes) on fuzzed command lines and files, Kokkos started once.
//
// An input is a command line, then files:
//   <arguments separated by spaces, tabs or newlines> [\0 <name> \0 <length: 2 bytes, little
//   endian> <contents: that many bytes, or what is left>]...
// Each input runs in a fresh folder holding valid fixtures (q.npy, k.npy, v.npy: (1, 16, 2, 4)
// float32; q64.npy: float64; x.npy: (1, 16, 8); w/: a layer's weights for embed_dim 8, bias and
// sub-LayerNorm), which the input's files add to or replace (w/q_proj.weight.npy, ...). The tool
// must end with status 0 (done), 1 (bad command line) or 2 (a file or argument it rejects, with a
// message); status 3 (an unexpected failure), an escaping exception, a crash or a sanitizer
// finding is a bug. Inputs that would leave the folder (an absolute path, "..") or ask for more
// than 3 warm-up or timed calls are skipped: the fuzzer explores files and arguments, not
// the time a legitimate long run takes.
#include <Dilated_MemoryTracker.hpp>
#include <Dilated_Npy.hpp>

#include <Kokkos_Core.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <system_error>
#include <vector>

int dilated_cli_main(int argc, char* argv[], bool start_kokkos);  // tools/dilated_attention_cli.cpp

namespace {

namespace fs = std::filesystem;

fs::path work_root;                           // this process's folder; inputs run in work/
std::map<std::string, std::string> fixtures;  // relative path -> bytes

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Writes the fixtures once with the library's own writers and keeps their bytes.
void make_fixtures(const fs::path& dir) {
  fs::create_directories(dir / "w");
  auto values = [](std::size_t n, double scale) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i)
      v[i] = static_cast<float>(scale * (static_cast<double>((i * 37) % 17) - 8.0) / 8.0);
    return v;
  };
  const std::vector<std::size_t> qkv = {1, 16, 2, 4};
  dilated::npy::write((dir / "q.npy").string(), qkv, values(128, 1.0).data());
  dilated::npy::write((dir / "k.npy").string(), qkv, values(128, 0.5).data());
  dilated::npy::write((dir / "v.npy").string(), qkv, values(128, 2.0).data());
  const auto q = values(128, 1.0);
  const std::vector<double> q64(q.begin(), q.end());
  dilated::npy::write((dir / "q64.npy").string(), qkv, q64.data());
  dilated::npy::write((dir / "x.npy").string(), {1, 16, 8}, values(128, 1.0).data());
  // A layer's weights as its save() names them (embed_dim 8, biases and the sub-LayerNorm),
  // written here so that this file compiles none of the library beyond what the tool does.
  const std::size_t e = 8;
  for (const char* name : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
    dilated::npy::write((dir / "w" / (std::string(name) + ".weight.npy")).string(), {e, e},
                        values(e * e, 0.3).data());
    dilated::npy::write((dir / "w" / (std::string(name) + ".bias.npy")).string(), {e},
                        values(e, 0.1).data());
  }
  const std::vector<float> ones(e, 1.0f), zeros(e, 0.0f);
  dilated::npy::write((dir / "w" / "norm.weight.npy").string(), {e}, ones.data());
  dilated::npy::write((dir / "w" / "norm.bias.npy").string(), {e}, zeros.data());
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      fixtures[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
    }
  }
}

// A token that names a path outside the working folder.
bool leaves_folder(const std::string& token) {
  if (token.find("..") != std::string::npos) return true;
  for (std::size_t i = 0; i < token.size(); ++i) {
    const bool starts_value = i == 0 || token[i - 1] == '=' || token[i - 1] == ',';
    if (token[i] == '/' && starts_value) return true;
  }
  return false;
}

bool safe_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || leaves_folder(name) || name.back() == '/') return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == '/';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // One host thread: the fuzzer runs one input at a time, and a run is tiny.
  static std::string program = "dilated_fuzz_cli", threads = "--kokkos-threads=1";
  static char* kokkos_argv[] = {program.data(), threads.data(), nullptr};
  int kokkos_argc = 2;
  Kokkos::initialize(kokkos_argc, kokkos_argv);
  // The tool's memory tracker keeps its state in a function-local static; made here, before the
  // exit handler below is registered, it outlives Kokkos::finalize (whose deallocations it
  // hears): made later, by the first run, it was destroyed first (a use after free at exit).
  dilated::tools::MemoryTracker::reset();
  work_root = fs::temp_directory_path() / ("dilated_fuzz_cli." + std::to_string(getpid()));
  fs::remove_all(work_root);
  std::atexit([] {
    Kokkos::finalize();
    std::error_code error;
    fs::remove_all(work_root, error);
  });
  make_fixtures(work_root / "fixtures");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::size_t end_of_line = std::min(input.find('\0'), input.size());
  // The command line.
  std::vector<std::string> args = {"dilated-attention"};
  std::string token;
  for (std::size_t i = 0; i <= end_of_line; ++i) {
    const char c = i < end_of_line ? input[i] : ' ';
    if (c == ' ' || c == '\t' || c == '\n') {
      if (!token.empty()) args.push_back(token);
      token.clear();
    } else {
      token += c;
    }
  }
  if (args.size() > 64) return -1;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (leaves_folder(args[i])) return -1;  // rejected: not added to the corpus
    const auto count = [&](const std::string& name) -> std::string {
      if (args[i] == name && i + 1 < args.size()) return args[i + 1];
      if (args[i].rfind(name + "=", 0) == 0) return args[i].substr(name.size() + 1);
      return "0";
    };
    for (const char* option : {"--warmup", "--repeats"}) {
      const std::string value = count(option);
      if (value.size() > 1 || (value[0] > '3' && value[0] <= '9')) return -1;
    }
  }
  // The files: fixtures, then the input's.
  std::map<std::string, std::string> files = fixtures;
  for (std::size_t at = end_of_line; at < input.size();) {
    const std::size_t name_end = input.find('\0', at + 1);
    if (name_end == std::string::npos || name_end + 2 >= input.size()) break;
    const std::string name = input.substr(at + 1, name_end - at - 1);
    const std::size_t length =
        static_cast<unsigned char>(input[name_end + 1]) +
        256 * static_cast<std::size_t>(static_cast<unsigned char>(input[name_end + 2]));
    const std::size_t begin = name_end + 3;
    const std::size_t count = std::min(length, input.size() - begin);
    if (safe_name(name)) files[name] = input.substr(begin, count);
    at = begin + count;
  }
  const fs::path work = work_root / "work";
  fs::remove_all(work);
  fs::create_directories(work / "w");
  for (const auto& [name, bytes] : files) {  // a name under a missing folder is not written
    std::ofstream(work / name, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  const fs::path here = fs::current_path();
  fs::current_path(work);
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  const int status = dilated_cli_main(static_cast<int>(args.size()), argv.data(), false);
  fs::current_path(here);
  if (status < 0 || status > 2) {
    std::fprintf(stderr, "dilated_fuzz_cli: the tool ended with status %d\n", status);
    std::abort();
  }
  return 0;
}
