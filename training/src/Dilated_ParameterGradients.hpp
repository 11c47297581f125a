// What the optimizers and the gradient clipping step: a list of trainable tensors, each a
// parameter and its gradient as flat Views of one storage type, with the tensor's name and shape
// (the names make the optimizer state's file names, <name>.exp_avg.npy and so on).
//
// A layer's tensors come paired by pair_gradients from the layer's named_tensors():
//
//   auto tensors = dilated::training::pair_gradients(layer.parameters().named_tensors(),
//                                                    grads.parameters.named_tensors());
//   optimizer.step(space, tensors);
//
// The Views are unmanaged: they point into the layer's parameter and gradient Views, which must
// outlive every call that uses the list.
#ifndef DILATED_PARAMETER_GRADIENTS_HPP
#define DILATED_PARAMETER_GRADIENTS_HPP

#include <Dilated_Parameters.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <string>
#include <vector>

namespace dilated::training {

template <class T, class MemorySpace>
using FlatView = Kokkos::View<T*, MemorySpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

// One trainable tensor. `shape` is what the state files record (its product must be the number
// of values); `parameter` and `gradient` hold the same number of values.
template <class T, class MemorySpace>
struct ParameterGradient {
  std::string name;
  std::vector<std::size_t> shape;
  FlatView<T, MemorySpace> parameter;
  FlatView<T, MemorySpace> gradient;
};

template <class T, class MemorySpace>
using ParameterGradients = std::vector<ParameterGradient<T, MemorySpace>>;

// Pairs parameters with gradients position by position, naming each `prefix + name` (a prefix
// such as "blocks.3.attn." keeps the names of several layers apart in one list). Throws
// std::invalid_argument when the lists differ in length, names or shapes.
template <class T, class MemorySpace>
ParameterGradients<T, MemorySpace> pair_gradients(
    const std::vector<NamedTensor<T, MemorySpace>>& parameters,
    const std::vector<NamedTensor<T, MemorySpace>>& gradients, const std::string& prefix = "") {
  constexpr const char* fn = "dilated::training::pair_gradients";
  dilated::Impl::require(parameters.size() == gradients.size(), fn, "parameters has ",
                         parameters.size(), " tensors but gradients has ", gradients.size());
  ParameterGradients<T, MemorySpace> list;
  list.reserve(parameters.size());
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const auto& p = parameters[i];
    const auto& g = gradients[i];
    dilated::Impl::require(p.name == g.name, fn, "parameters[", i, "] is '", p.name,
                           "' but gradients[", i, "] is '", g.name, "'");
    dilated::Impl::require(p.shape == g.shape && p.values.extent(0) == g.values.extent(0), fn,
                           "gradients[", i, "] ('", g.name, "') has shape ",
                           dilated::Impl::shape_string(g.shape), ", the parameter ",
                           dilated::Impl::shape_string(p.shape));
    list.push_back({prefix + p.name, p.shape, p.values, g.values});
  }
  return list;
}

}  // namespace dilated::training

#endif  // DILATED_PARAMETER_GRADIENTS_HPP
