// Training checkpoints: a model's tensors as .npy files in PyTorch names (float64 for double
// storage, float32 otherwise: exact for float, half and bf16), read back only when every file
// matches its tensor's shape, and a checkpoint directory that is replaced whole or not at all.
//
//   training::CheckpointTransaction checkpoint("run/checkpoint");   // writes go to <dir>.partial
//   training::save_tensors(space, model.named_tensors(), checkpoint.path());
//   optimizer.save_state(space, checkpoint.path());
//   training::save_values(checkpoint.path(), "trainer.npy", {...});
//   checkpoint.commit();   // <dir> now holds all of it; the previous <dir> is removed
//
// Until commit() the previous checkpoint is untouched; a transaction that is destroyed without
// commit() removes its staging directory.
#ifndef DILATED_CHECKPOINT_HPP
#define DILATED_CHECKPOINT_HPP

#include <Dilated_Npy.hpp>
#include <Dilated_Parameters.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <filesystem>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace dilated::training {

class CheckpointTransaction {
 public:
  // Creates <directory>.partial (removing one a failed save left). Throws std::invalid_argument
  // naming the directory when it cannot be created.
  explicit CheckpointTransaction(std::string directory)
      : directory_(std::move(directory)), staging_(directory_ + ".partial") {
    constexpr const char* fn = "dilated::training::CheckpointTransaction";
    dilated::Impl::require(!directory_.empty(), fn, "directory must not be empty");
    std::error_code error;
    std::filesystem::remove_all(staging_, error);
    std::filesystem::create_directories(staging_, error);
    dilated::Impl::require(!error, fn, "cannot create '", staging_, "': ", error.message());
  }
  CheckpointTransaction(const CheckpointTransaction&) = delete;
  CheckpointTransaction& operator=(const CheckpointTransaction&) = delete;
  ~CheckpointTransaction() {
    if (!committed_) {
      std::error_code ignored;
      std::filesystem::remove_all(staging_, ignored);
    }
  }

  // Where the checkpoint's files go until commit().
  const std::string& path() const { return staging_; }

  // Replaces <directory> by the staging directory: the old one is renamed aside first and
  // removed after, so that at every moment one whole checkpoint exists under one of the names.
  void commit() {
    constexpr const char* fn = "dilated::training::CheckpointTransaction::commit";
    namespace fs = std::filesystem;
    std::error_code error;
    const std::string old = directory_ + ".old";
    fs::remove_all(old, error);
    if (fs::exists(directory_)) {
      fs::rename(directory_, old, error);
      dilated::Impl::require(!error, fn, "cannot move '", directory_, "' aside: ", error.message());
    }
    fs::rename(staging_, directory_, error);
    dilated::Impl::require(!error, fn, "cannot rename '", staging_, "' to '", directory_,
                           "': ", error.message());
    committed_ = true;
    fs::remove_all(old, error);
  }

 private:
  std::string directory_, staging_;
  bool committed_ = false;
};

// Every tensor as directory/<name>.npy once the work on `space` is done.
template <class ExecSpace, class T, class MemorySpace>
void save_tensors(const ExecSpace& space, const std::vector<NamedTensor<T, MemorySpace>>& tensors,
                  const std::string& directory) {
  constexpr const char* fn = "dilated::training::save_tensors";
  dilated::Impl::ScopedRegion region(fn);
  using File = std::conditional_t<std::is_same_v<T, double>, double, float>;
  dilated::Impl::fence(space, fn);
  Impl::StateWriter writer(directory);
  for (const auto& t : tensors) {
    const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), t.values);
    std::vector<File> values(host.extent(0));
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = static_cast<File>(dilated::Impl::to_double(host(i)));
    writer.write(t.name + ".npy", t.shape, values);
  }
  writer.commit(fn);
}

// Reads directory/<name>.npy into every tensor. Throws npy::FormatError for a missing or
// malformed file and std::invalid_argument naming the file for another shape (a checkpoint of
// another model) or a value that is not finite; nothing is changed unless every file is read.
template <class ExecSpace, class T, class MemorySpace>
void load_tensors(const ExecSpace& space, const std::vector<NamedTensor<T, MemorySpace>>& tensors,
                  const std::string& directory) {
  constexpr const char* fn = "dilated::training::load_tensors";
  dilated::Impl::ScopedRegion region(fn);
  std::vector<std::vector<double>> values;
  values.reserve(tensors.size());
  for (const auto& t : tensors)
    values.push_back(Impl::read_state_file(fn, directory, t.name + ".npy", t.shape));
  dilated::Impl::fence(space, fn);  // no work in flight reads the tensors being replaced
  for (std::size_t i = 0; i < tensors.size(); ++i)
    Impl::copy_to_view(values[i], tensors[i].values);
}

// A small float64 vector (a trainer's counters) as directory/file, and back (its length checked).
inline void save_values(const std::string& directory, const std::string& file,
                        const std::vector<double>& values) {
  Impl::StateWriter writer(directory);
  writer.write(file, {values.size()}, values);
  writer.commit("dilated::training::save_values");
}
inline std::vector<double> load_values(const std::string& directory, const std::string& file,
                                       std::size_t count) {
  return Impl::read_state_file("dilated::training::load_values", directory, file, {count});
}

}  // namespace dilated::training

#endif  // DILATED_CHECKPOINT_HPP
