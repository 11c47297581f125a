// The parameters of dilated::MultiheadDilatedAttention as Kokkos Views, their initialisation
// (Xavier-normal weights from a seeded generator, as the seed's PyTorch layer) and their .npy
// files, named like the PyTorch layer's state_dict so weights move across:
//
//   file                  shape    what
//   q_proj.weight.npy     (E, E)   rows [0, E) of in_proj_weight      (PyTorch Linear: (out, in))
//   k_proj.weight.npy     (E, E)   rows [E, 2E)
//   v_proj.weight.npy     (E, E)   rows [2E, 3E)
//   q_proj.bias.npy ...   (E,)     in_proj_bias [0, E), [E, 2E), [2E, 3E)       (bias only)
//   norm.weight.npy       (E,)     sub-LayerNorm gamma                      (layer_norm only)
//   norm.bias.npy         (E,)     sub-LayerNorm beta                       (layer_norm only)
//   out_proj.weight.npy   (E, E)
//   out_proj.bias.npy     (E,)                                                    (bias only)
//
// Saved as float64 for double storage, float32 otherwise (exact for float, half and bf16);
// loading accepts float16/32/64 files and rounds to the storage type.
#ifndef DILATED_PARAMETERS_HPP
#define DILATED_PARAMETERS_HPP

#include <Dilated_DeviceMemory.hpp>
#include <Dilated_Npy.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated {

// Constructs a layer, a block or a model's blocks without drawing their parameters: the Views are
// allocated zero-filled (LayerNorm weights too), to be written by reset_parameters, a load or
// the caller. A model that draws every block's values itself, on several threads, builds its
// blocks so: drawing them in each constructor first cost a 1.3B model about 45 s on one core.
struct SkipInit {
  explicit SkipInit() = default;
};
inline constexpr SkipInit skip_init{};

// One tensor of the PyTorch layer: its state_dict name, its shape, and its values as a flat
// (unmanaged) View into the owning parameter View. Valid while that parameter object lives.
template <class T, class MemorySpace>
struct NamedTensor {
  std::string name;
  std::vector<std::size_t> shape;
  Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> values;
};

template <class T, class MemorySpace>
struct MultiheadParameters {
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemorySpace>;
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemorySpace>;

  Matrix in_proj_weight;   // (3E, E): q_proj.weight, k_proj.weight, v_proj.weight stacked
  Vector in_proj_bias;     // (3E) or empty (bias = false)
  Vector norm_weight;      // (E) or empty (layer_norm = false)
  Vector norm_bias;        // (E) or empty (layer_norm = false)
  Matrix out_proj_weight;  // (E, E)
  Vector out_proj_bias;    // (E) or empty (bias = false)

  MultiheadParameters() = default;

  // Zero-filled parameters of a layer with embed_dim E.
  MultiheadParameters(int embed_dim, bool bias, bool layer_norm, const std::string& label)
      : in_proj_weight(Impl::allocate_view<Matrix>(label + "::in_proj_weight", true, 3 * embed_dim,
                                                   embed_dim)),
        in_proj_bias(
            Impl::allocate_view<Vector>(label + "::in_proj_bias", true, bias ? 3 * embed_dim : 0)),
        norm_weight(
            Impl::allocate_view<Vector>(label + "::norm_weight", true, layer_norm ? embed_dim : 0)),
        norm_bias(
            Impl::allocate_view<Vector>(label + "::norm_bias", true, layer_norm ? embed_dim : 0)),
        out_proj_weight(
            Impl::allocate_view<Matrix>(label + "::out_proj_weight", true, embed_dim, embed_dim)),
        out_proj_bias(
            Impl::allocate_view<Vector>(label + "::out_proj_bias", true, bias ? embed_dim : 0)) {}

  int embed_dim() const { return static_cast<int>(out_proj_weight.extent(0)); }

  // The PyTorch layer's tensors in state_dict order (q, k, v projections, norm, out_proj), each
  // a flat view into these Views; absent ones (no bias, no layer norm) are left out.
  std::vector<NamedTensor<T, MemorySpace>> named_tensors() const {
    const std::size_t e = embed_dim();
    std::vector<NamedTensor<T, MemorySpace>> list;
    const auto add = [&](const char* name, std::vector<std::size_t> shape, T* data) {
      std::size_t size = 1;
      for (auto extent : shape)
        size *= extent;
      list.push_back(
          {name, std::move(shape),
           Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(data, size)});
    };
    const char* projections[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; ++i) {
      add((std::string(projections[i]) + ".weight").c_str(), {e, e},
          in_proj_weight.data() + i * e * e);
      if (in_proj_bias.extent(0) > 0) {
        add((std::string(projections[i]) + ".bias").c_str(), {e}, in_proj_bias.data() + i * e);
      }
    }
    if (norm_weight.extent(0) > 0) {
      add("norm.weight", {e}, norm_weight.data());
      add("norm.bias", {e}, norm_bias.data());
    }
    add("out_proj.weight", {e, e}, out_proj_weight.data());
    if (out_proj_bias.extent(0) > 0) add("out_proj.bias", {e}, out_proj_bias.data());
    return list;
  }
};

namespace Impl {

// N(0, 1) from a 64-bit Mersenne twister by Box-Muller: std::normal_distribution is not
// specified exactly, this is the same on every standard library.
class NormalGenerator {
 public:
  explicit NormalGenerator(std::uint64_t seed) : engine_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1], u2 in [0, 1), 53 random bits each.
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// Parameter values drawn on the host, then copied to their Views in one place: drawing is plain
// C++ (no Kokkos call), so a model draws its blocks' values on several host threads (each block
// from its own seed: the values do not depend on the threads) and copies them from one.
template <class T, class MemorySpace>
class ParameterDraw {
 public:
  using Flat = Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  // Values for the `size` elements at `data` (a View's), one per call of value(i).
  template <class Value>
  void draw(T* data, std::size_t size, Value&& value) {
    std::vector<T> values(size);
    for (std::size_t i = 0; i < size; ++i)
      values[i] = static_cast<T>(value(i));
    pending_.emplace_back(Flat(data, size), std::move(values));
  }
  // Copies every drawn tensor to its View (Kokkos calls: one thread).
  void copy() {
    using Host = Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    for (const auto& [view, values] : pending_)
      Kokkos::deep_copy(view, Host(values.data(), values.size()));
    pending_.clear();
  }

 private:
  std::vector<std::pair<Flat, std::vector<T>>> pending_;
};

// The seed's _reset_parameters: Xavier-normal weights (std = gain sqrt(2 / (fan_in + fan_out)),
// gain 1 for q and k, gamma_init for v and out_proj), zero biases, LayerNorm weight 1 and bias
// 0. One generator seeded with `seed` draws q, k, v, then out_proj, row by row.
template <class T, class MemorySpace>
void draw_parameters(const MultiheadParameters<T, MemorySpace>& p, double gamma_init,
                     std::uint64_t seed, ParameterDraw<T, MemorySpace>& out) {
  NormalGenerator normal(seed);
  for (const auto& tensor : p.named_tensors()) {
    const std::string& name = tensor.name;
    const bool weight = tensor.shape.size() == 2;
    double value = 0, std = 0;
    if (weight) {
      const bool magneto = name == "v_proj.weight" || name == "out_proj.weight";
      std = (magneto ? gamma_init : 1.0) *
            std::sqrt(2.0 / static_cast<double>(tensor.shape[0] + tensor.shape[1]));
    } else if (name == "norm.weight") {
      value = 1.0;
    }
    out.draw(tensor.values.data(), tensor.values.extent(0),
             [&](std::size_t) { return weight ? std * normal() : value; });
  }
}
template <class T, class MemorySpace>
void reset_parameters(const MultiheadParameters<T, MemorySpace>& p, double gamma_init,
                      std::uint64_t seed) {
  ParameterDraw<T, MemorySpace> values;
  draw_parameters(p, gamma_init, seed, values);
  values.copy();
}

inline std::string shape_string(const std::vector<std::size_t>& shape) {
  std::ostringstream out;
  out << "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

// Writes every named tensor to directory/<name>.npy (the directory must exist).
template <class T, class MemorySpace>
void save_parameters(const MultiheadParameters<T, MemorySpace>& p, const std::string& directory) {
  using File = std::conditional_t<std::is_same_v<T, double>, double, float>;
  for (const auto& tensor : p.named_tensors()) {
    const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), tensor.values);
    std::vector<File> values(host.extent(0));
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = static_cast<File>(to_double(host(i)));
    npy::write(directory + "/" + tensor.name + ".npy", tensor.shape, values.data());
  }
}

// Reads every named tensor from directory/<name>.npy. Throws npy::FormatError for a missing or
// malformed file and std::invalid_argument (naming `fn` and the file) for a shape mismatch;
// nothing is changed unless every file is read.
template <class T, class MemorySpace>
void load_parameters(const char* fn, const MultiheadParameters<T, MemorySpace>& p,
                     const std::string& directory) {
  const auto tensors = p.named_tensors();
  std::vector<std::vector<double>> values;
  for (const auto& tensor : tensors) {
    const std::string path = directory + "/" + tensor.name + ".npy";
    const npy::Array array = npy::read(path);
    require(array.shape == tensor.shape, fn, path, " has shape ", shape_string(array.shape),
            ", expected ", shape_string(tensor.shape));
    values.push_back(array.to_double());
  }
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    auto host = Kokkos::create_mirror_view(tensors[t].values);
    for (std::size_t i = 0; i < host.extent(0); ++i)
      host(i) = static_cast<T>(values[t][i]);
    Kokkos::deep_copy(tensors[t].values, host);
  }
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_PARAMETERS_HPP
