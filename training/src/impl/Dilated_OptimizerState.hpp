// What the optimizers share on the host: the state's value type, the checks of the tensor list
// and of the hyperparameters, the record of which tensors the state was made for, and the state
// files (written to temporaries and renamed once every file is written; read whole and checked
// before anything is changed).
#ifndef DILATED_IMPL_OPTIMIZER_STATE_HPP
#define DILATED_IMPL_OPTIMIZER_STATE_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Npy.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <Dilated_Parameters.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dilated::training::Impl {

using dilated::Impl::require;

using dilated::Impl::is_storage_type_v;  // core/src/Dilated_Compat.hpp

// Moments, master weights and every update in float, in double for double storage.
template <class T>
using state_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// half and bf16 storage (where they are real 16-bit types) keep an fp32 master copy of the
// parameters: the update is applied to it and rounded into the storage parameter.
template <class T>
inline constexpr bool needs_master_v = !std::is_same_v<T, state_t<T>>;

// Views on the host need teams of one thread; a GPU runs a team per block of threads.
template <class ExecSpace>
inline constexpr bool runs_on_host_v =
    std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>;

inline std::size_t shape_size(const std::vector<std::size_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
}

// Every tensor's gradient matches its parameter and its shape; names are non-empty and unique
// (they name the state files).
template <class T, class MemorySpace>
void check_tensor_list(const char* fn, const ParameterGradients<T, MemorySpace>& tensors) {
  require(!tensors.empty(), fn, "tensors is empty");
  std::set<std::string> names;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    require(!t.name.empty(), fn, "tensors[", i, "] has an empty name");
    require(names.insert(t.name).second, fn, "tensors[", i, "] ('", t.name,
            "'): the name appears twice");
    require(t.gradient.extent(0) == t.parameter.extent(0), fn, "tensors[", i, "] ('", t.name,
            "'): gradient has ", t.gradient.extent(0), " values but parameter has ",
            t.parameter.extent(0));
    require(shape_size(t.shape) == t.parameter.extent(0), fn, "tensors[", i, "] ('", t.name,
            "'): shape ", dilated::Impl::shape_string(t.shape), " does not hold ",
            t.parameter.extent(0), " values");
  }
}

// The tensors an optimizer's state was made for: names, shapes and sizes, in order.
struct TensorRecord {
  std::string name;
  std::vector<std::size_t> shape;
};

template <class T, class MemorySpace>
std::vector<TensorRecord> record_tensors(const ParameterGradients<T, MemorySpace>& tensors) {
  std::vector<TensorRecord> records;
  records.reserve(tensors.size());
  for (const auto& t : tensors)
    records.push_back({t.name, t.shape});
  return records;
}

// The list handed to a later step must be the one the state was made for (same tensors in the
// same order); the Views may point elsewhere (a layer's parameters moved, for example).
template <class T, class MemorySpace>
void check_same_tensors(const char* fn, const std::vector<TensorRecord>& records,
                        const ParameterGradients<T, MemorySpace>& tensors) {
  require(tensors.size() == records.size(), fn, "tensors has ", tensors.size(),
          " tensors but the optimizer's state holds ", records.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    require(t.name == records[i].name && t.shape == records[i].shape, fn, "tensors[", i, "] is '",
            t.name, "' ", dilated::Impl::shape_string(t.shape),
            " but the optimizer's state was made for '", records[i].name, "' ",
            dilated::Impl::shape_string(records[i].shape));
    require(t.parameter.extent(0) == shape_size(t.shape), fn, "tensors[", i, "] ('", t.name,
            "'): parameter has ", t.parameter.extent(0), " values, its shape ",
            dilated::Impl::shape_string(t.shape), " holds ", shape_size(t.shape));
    require(t.gradient.extent(0) == t.parameter.extent(0), fn, "tensors[", i, "] ('", t.name,
            "'): gradient has ", t.gradient.extent(0), " values but parameter has ",
            t.parameter.extent(0));
  }
}

// The hyperparameters of AdamW, checked where they are set.
inline void check_lr(const char* fn, double lr) {
  require(std::isfinite(lr) && lr >= 0, fn, "lr = ", lr, " must be finite and >= 0");
}

inline void check_adamw_hyperparameters(const char* fn, double lr, double beta1, double beta2,
                                        double eps, double weight_decay) {
  check_lr(fn, lr);
  require(std::isfinite(beta1) && beta1 >= 0 && beta1 < 1, fn, "beta1 = ", beta1,
          " must be in [0, 1)");
  require(std::isfinite(beta2) && beta2 >= 0 && beta2 < 1, fn, "beta2 = ", beta2,
          " must be in [0, 1)");
  require(std::isfinite(eps) && eps > 0, fn, "eps = ", eps, " must be finite and > 0");
  require(std::isfinite(weight_decay) && weight_decay >= 0, fn, "weight_decay = ", weight_decay,
          " must be finite and >= 0");
}

// ------------------------------------------------------------------------------ state files

// A View's values on the host as the file type (float64 for double state, float32 otherwise;
// exact for every state the optimizers keep: float, double and 8-bit codes).
template <class File, class View>
std::vector<File> host_values(const View& view) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  std::vector<File> values(host.extent(0));
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<File>(host(i));
  return values;
}

// Files written to <path>.tmp first and renamed over <path> by commit() once every one is
// written, so that a failed save leaves the previous files whole. Temporaries left by a failed
// save are removed.
class StateWriter {
 public:
  explicit StateWriter(std::string directory) : directory_(std::move(directory)) {}
  StateWriter(const StateWriter&) = delete;
  StateWriter& operator=(const StateWriter&) = delete;
  ~StateWriter() {
    if (!committed_) {
      for (const auto& path : written_)
        std::remove((path + ".tmp").c_str());
    }
  }

  template <class File>
  void write(const std::string& file, const std::vector<std::size_t>& shape,
             const std::vector<File>& values) {
    const std::string path = directory_ + "/" + file;
    written_.push_back(path);
    npy::write(path + ".tmp", shape, values.data());
  }

  void commit(const char* fn) {
    for (const auto& path : written_) {
      require(std::rename((path + ".tmp").c_str(), path.c_str()) == 0, fn, "cannot rename ", path,
              ".tmp to ", path);
    }
    committed_ = true;
  }

 private:
  std::string directory_;
  std::vector<std::string> written_;
  bool committed_ = false;
};

// What a state file may hold: any finite value (exp_avg, master weights), finite values >= 0
// (exp_avg_sq, block scales), or 8-bit codes (integers 0 to 255).
enum class StateValues { finite, non_negative, codes };

// directory/file as doubles, its shape required to be `shape` and its values `kind`. Throws
// npy::FormatError for a missing or malformed file, std::invalid_argument naming `fn` and the
// file for another shape or a value out of range.
inline std::vector<double> read_state_file(const char* fn, const std::string& directory,
                                           const std::string& file,
                                           const std::vector<std::size_t>& shape,
                                           StateValues kind = StateValues::finite) {
  const std::string path = directory + "/" + file;
  const npy::Array array = npy::read(path);
  require(array.shape == shape, fn, path, " has shape ", dilated::Impl::shape_string(array.shape),
          ", expected ", dilated::Impl::shape_string(shape));
  std::vector<double> values = array.to_double();
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double x = values[i];
    const bool ok = std::isfinite(x) &&
                    (kind == StateValues::finite || (kind == StateValues::non_negative && x >= 0) ||
                     (kind == StateValues::codes && x >= 0 && x <= 255 && x == std::floor(x)));
    require(ok, fn, path, " holds ", x, " at index ", i,
            kind == StateValues::codes          ? " (8-bit codes are integers 0 to 255)"
            : kind == StateValues::non_negative ? " (must be finite and >= 0)"
                                                : " (must be finite)");
  }
  return values;
}

// The step count every tensor's <name>.step.npy holds (PyTorch keeps one per parameter): one
// non-negative integer, the same for every tensor.
inline long read_step_count(const char* fn, const std::string& directory,
                            const std::vector<TensorRecord>& records) {
  long count = -1;
  for (const auto& r : records) {
    const double value = read_state_file(fn, directory, r.name + ".step.npy", {})[0];
    require(std::isfinite(value) && value >= 0 && value == std::floor(value) && value < 9.0e15, fn,
            directory, "/", r.name, ".step.npy holds ", value, ", not a step count");
    const long step = static_cast<long>(value);
    require(count < 0 || step == count, fn, directory, "/", r.name, ".step.npy holds ", step,
            " but other tensors' step files hold ", count);
    count = step;
  }
  return count;
}

// `values` (read from a file) into a View of its length, through a host mirror.
template <class View>
void copy_to_view(const std::vector<double>& values, const View& view) {
  using V = typename View::non_const_value_type;
  auto host = Kokkos::create_mirror_view(view);
  for (std::size_t i = 0; i < host.extent(0); ++i)
    host(i) = static_cast<V>(values[i]);
  Kokkos::deep_copy(view, host);
}

}  // namespace dilated::training::Impl

#endif  // DILATED_IMPL_OPTIMIZER_STATE_HPP
