// A byte-level corpus (vocabulary 256: every byte is a token, as scripts/prepare_corpus.sh
// writes train.bin and val.bin) and the windows a language model trains on: for a batch of b
// sequences of n tokens, b windows of n + 1 consecutive bytes at random starts, the first n as the
// inputs and the last n as the next-token targets, copied as int32 into (b, n) Views on the
// device.
//
// The starts come from a counter-based generator: window k (counting every window drawn since
// the seed) starts at SplitMix64's k-th output for the seed modulo the number of starts. The
// whole sampler state is (seed, windows drawn): two integers that save_state writes and
// load_state reads, and a resumed run draws the windows the uninterrupted run would have.
// (The modulo favours some starts by at most starts / 2^64, below 1e-11 for any corpus that
// fits in memory.)
#ifndef DILATED_BYTE_CORPUS_HPP
#define DILATED_BYTE_CORPUS_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_DeviceMemory.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::training {

// Where a ByteCorpus's sampler stands: its seed and how many windows it has drawn.
struct CorpusSamplerState {
  std::uint64_t seed = 0;
  std::uint64_t windows_drawn = 0;
};

namespace Impl {

// SplitMix64's output for the state x (Steele, Lea & Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014): the k-th output for seed s is splitmix64(s + (k + 1) 0x9e37...).
inline std::uint64_t splitmix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace Impl

class ByteCorpus {
 public:
  using HostTokens = Kokkos::View<int**, Kokkos::LayoutRight, Kokkos::HostSpace>;

  // Reads the whole file at `path` (one token per byte) for windows of sequence_length + 1
  // bytes, the sampler at `seed`. Throws std::invalid_argument naming the path when the file
  // cannot be read or holds fewer than sequence_length + 1 bytes, or when sequence_length < 1.
  ByteCorpus(const std::string& path, long sequence_length, std::uint64_t seed)
      : path_(path), sequence_length_(sequence_length) {
    constexpr const char* fn = "dilated::training::ByteCorpus";
    dilated::Impl::ScopedRegion region(fn);
    dilated::Impl::require(sequence_length >= 1, fn, "sequence_length = ", sequence_length,
                           " must be >= 1");
    std::error_code error;
    dilated::Impl::require(std::filesystem::is_regular_file(path, error), fn, "path '", path,
                           "' is not a readable file");
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    dilated::Impl::require(file.good(), fn, "path '", path, "' cannot be opened");
    const std::streamoff size = file.tellg();
    dilated::Impl::require(size >= 0, fn, "path '", path, "': cannot tell its size");
    bytes_.resize(static_cast<std::size_t>(size));
    file.seekg(0);
    file.read(reinterpret_cast<char*>(bytes_.data()), size);
    dilated::Impl::require(file.gcount() == size, fn, "path '", path, "': read ", file.gcount(),
                           " of ", size, " bytes");
    dilated::Impl::require(
        static_cast<long>(bytes_.size()) >= sequence_length + 1, fn, "path '", path, "' holds ",
        bytes_.size(),
        " bytes, fewer than a window of sequence_length + 1 = ", sequence_length + 1);
    state_.seed = seed;
  }

  const std::string& path() const { return path_; }
  long sequence_length() const { return sequence_length_; }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  std::size_t size() const { return bytes_.size(); }
  // Distinct windows: starts 0 .. size - sequence_length - 1 (the last one's target is the
  // file's last byte).
  std::size_t window_count() const {
    return bytes_.size() - static_cast<std::size_t>(sequence_length_);
  }

  // Where window k of this seed starts (host arithmetic).
  std::size_t window_start(std::uint64_t k) const {
    constexpr std::uint64_t golden = 0x9e3779b97f4a7c15ULL;
    return static_cast<std::size_t>(Impl::splitmix64(state_.seed + (k + 1) * golden) %
                                    window_count());
  }

  // The next inputs.extent(0) windows: inputs(i, j) = byte s_i + j and targets(i, j) = byte
  // s_i + j + 1, with s_i the start of window windows_drawn + i. inputs and targets are (b, n)
  // int32 LayoutRight Views, n = sequence_length, in any memory space; the bytes are staged in
  // host buffers kept between calls and copied on `space`. Returns when the copies are done (one
  // wait: the staging buffers are free for the next call).
  template <class ExecSpace, class Inputs, class Targets>
  void draw(const ExecSpace& space, const Inputs& inputs, const Targets& targets) {
    constexpr const char* fn = "dilated::training::ByteCorpus::draw";
    static_assert(dilated::Impl::is_execution_space_v<ExecSpace>,
                  "dilated::training::ByteCorpus::draw: the first argument must be a Kokkos "
                  "execution space");
    static_assert(dilated::Impl::is_view_v<Inputs> && dilated::Impl::is_view_v<Targets>,
                  "dilated::training::ByteCorpus::draw: inputs and targets must be Kokkos::Views");
    static_assert(std::is_same_v<typename Inputs::value_type, int> &&
                      std::is_same_v<typename Targets::value_type, int> &&
                      dilated::Impl::view_rank_v<Inputs> == 2 &&
                      dilated::Impl::view_rank_v<Targets> == 2 &&
                      std::is_same_v<typename Inputs::array_layout, Kokkos::LayoutRight> &&
                      std::is_same_v<typename Targets::array_layout, Kokkos::LayoutRight>,
                  "dilated::training::ByteCorpus::draw: inputs and targets must be (b, n) "
                  "LayoutRight Views of int");
    dilated::Impl::ScopedRegion region(fn);
    const std::size_t b = inputs.extent(0), n = inputs.extent(1);
    dilated::Impl::require(static_cast<long>(n) == sequence_length_, fn, "inputs is (", b, ", ", n,
                           ") but the windows are of sequence_length = ", sequence_length_);
    dilated::Impl::require(targets.extent(0) == b && targets.extent(1) == n, fn, "targets is (",
                           targets.extent(0), ", ", targets.extent(1), ") but inputs is (", b, ", ",
                           n, ")");
    if (staged_inputs_.extent(0) != b || staged_inputs_.extent(1) != n) {
      // The tested one (inputs) last: a failed allocation leaves the next call to make both.
      staged_inputs_ = HostTokens();
      staged_targets_ = dilated::Impl::allocate_view<HostTokens>(
          "dilated::training::ByteCorpus::staged_targets", true, b, n);
      staged_inputs_ = dilated::Impl::allocate_view<HostTokens>(
          "dilated::training::ByteCorpus::staged_inputs", true, b, n);
    }
    for (std::size_t i = 0; i < b; ++i) {
      const std::uint8_t* window = bytes_.data() + window_start(state_.windows_drawn + i);
      for (std::size_t j = 0; j < n; ++j) {
        staged_inputs_(i, j) = window[j];
        staged_targets_(i, j) = window[j + 1];
      }
    }
    state_.windows_drawn += b;
    Kokkos::deep_copy(space, inputs, staged_inputs_);
    Kokkos::deep_copy(space, targets, staged_targets_);
    dilated::Impl::fence(space, "dilated::training::ByteCorpus::draw: staging buffers free");
  }

  CorpusSamplerState state() const { return state_; }
  void restore(const CorpusSamplerState& state) { state_ = state; }

  // Writes the sampler state (and the corpus size and sequence length it belongs to) as text to
  // `path`, through `path`.tmp renamed over it.
  void save_state(const std::string& path) const {
    constexpr const char* fn = "dilated::training::ByteCorpus::save_state";
    const std::string temporary = path + ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << header << "\nseed " << state_.seed << "\nwindows_drawn " << state_.windows_drawn
          << "\ncorpus_bytes " << bytes_.size() << "\nsequence_length " << sequence_length_ << "\n";
      out.close();
      if (!out) {
        std::remove(temporary.c_str());
        dilated::Impl::throw_invalid_argument(fn, "path '", path, "': cannot write ", temporary);
      }
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      std::remove(temporary.c_str());
      dilated::Impl::throw_invalid_argument(fn, "path '", path, "': cannot rename ", temporary,
                                            " over it");
    }
  }

  // Reads what save_state wrote; the next draw continues as if the run had not stopped. Throws
  // std::invalid_argument naming the file for a missing or malformed file or one saved for
  // another corpus size or sequence length; the state is unchanged then.
  void load_state(const std::string& path) {
    constexpr const char* fn = "dilated::training::ByteCorpus::load_state";
    std::ifstream in(path);
    dilated::Impl::require(in.good(), fn, "path '", path, "' cannot be opened");
    std::string first_line;
    std::getline(in, first_line);
    dilated::Impl::require(first_line == header, fn, "path '", path,
                           "' is not a ByteCorpus sampler state (first line '", first_line, "')");
    CorpusSamplerState state;
    std::uint64_t corpus_bytes = 0;
    long sequence_length = 0;
    const auto field = [&](const char* name, auto& value) {
      std::string key;
      in >> key >> value;
      dilated::Impl::require(!in.fail() && key == name, fn, "path '", path, "': expected '", name,
                             " <integer>', read '", key, "'");
    };
    field("seed", state.seed);
    field("windows_drawn", state.windows_drawn);
    field("corpus_bytes", corpus_bytes);
    field("sequence_length", sequence_length);
    dilated::Impl::require(corpus_bytes == bytes_.size(), fn, "path '", path,
                           "' is the state of a corpus of ", corpus_bytes, " bytes, not of ", path_,
                           " (", bytes_.size(), " bytes)");
    dilated::Impl::require(sequence_length == sequence_length_, fn, "path '", path,
                           "' is the state of windows of sequence_length = ", sequence_length,
                           ", not ", sequence_length_);
    state_ = state;
  }

 private:
  static constexpr const char* header = "dilated::training::ByteCorpus sampler state";

  std::string path_;
  long sequence_length_;
  std::vector<std::uint8_t> bytes_;
  CorpusSamplerState state_;
  HostTokens staged_inputs_, staged_targets_;
};

}  // namespace dilated::training

#endif  // DILATED_BYTE_CORPUS_HPP
