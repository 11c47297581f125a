// The multihead layer in double on the host, composed of plain loops and the exact attention
// reference: q, k, v projections, dilated::reference, LayerNorm, output projection. The oracle
// of the layer tests (and, by central differences, of its gradients).
#ifndef DILATED_LAYER_REFERENCE_HPP
#define DILATED_LAYER_REFERENCE_HPP

#include <Dilated_Geometry.hpp>
#include <Dilated_Parameters.hpp>
#include <Dilated_Reference.hpp>
#include <impl/Dilated_Numeric.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace dilated::testing {

using Host3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;

// The layer's parameters by PyTorch state_dict name, in double, C order.
struct HostParameters {
  std::map<std::string, std::vector<double>> tensors;
  std::vector<double>& operator[](const std::string& name) { return tensors.at(name); }
  const std::vector<double>& operator[](const std::string& name) const { return tensors.at(name); }
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
};

// Any list of NamedTensors (a layer's, a block's, a model's) by name, in double.
template <class Tensors>
HostParameters host_tensors(const Tensors& list) {
  HostParameters h;
  for (const auto& tensor : list) {
    const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), tensor.values);
    std::vector<double> values(host.extent(0));
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = dilated::Impl::to_double(host(i));
    h.tensors[tensor.name] = values;
  }
  return h;
}

template <class T, class MemorySpace>
HostParameters host_parameters(const MultiheadParameters<T, MemorySpace>& p) {
  return host_tensors(p.named_tensors());
}

struct LayerConfig {
  int embed_dim, num_heads;
  std::vector<int> segs, dils;
  Semantics semantics;
  bool layer_norm = true;
  double eps = 1e-5;
};

// y = x W^T + b over the rows of a (b, n, E) tensor; W (E, E) in C order, b empty or (E).
inline Host3 host_linear(const Host3& x, const std::vector<double>& w,
                         const std::vector<double>* bias) {
  const int e = x.extent(2);
  Host3 y("dilated::test::linear", x.extent(0), x.extent(1), e);
  for (std::size_t b = 0; b < x.extent(0); ++b)
    for (std::size_t t = 0; t < x.extent(1); ++t)
      for (int o = 0; o < e; ++o) {
        double sum = bias ? (*bias)[o] : 0.0;
        for (int i = 0; i < e; ++i)
          sum += x(b, t, i) * w[o * e + i];
        y(b, t, o) = sum;
      }
  return y;
}

// The layer's output for query, key, value (b, n, E) on the host, in double.
inline Host3 host_layer(const LayerConfig& c, const HostParameters& p, const Host3& query,
                        const Host3& key, const Host3& value, bool causal) {
  const int batch = query.extent(0), n = query.extent(1), e = c.embed_dim, h = c.num_heads,
            d = e / h;
  const auto bias = [&](const char* name) { return p.has(name) ? &p[name] : nullptr; };
  const Host3 q = host_linear(query, p["q_proj.weight"], bias("q_proj.bias"));
  const Host3 k = host_linear(key, p["k_proj.weight"], bias("k_proj.bias"));
  const Host3 v = host_linear(value, p["v_proj.weight"], bias("v_proj.bias"));
  using Heads = Kokkos::View<double****, Kokkos::LayoutRight, Kokkos::HostSpace,
                             Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  Host3 attention("dilated::test::attention", batch, n, e);
  dilated::reference(Geometry(c.segs, c.dils, h, c.semantics), Heads(q.data(), batch, n, h, d),
                     Heads(k.data(), batch, n, h, d), Heads(v.data(), batch, n, h, d),
                     Heads(attention.data(), batch, n, h, d), {causal, std::nullopt});
  Host3 z = attention;
  if (c.layer_norm) {
    z = Host3("dilated::test::normed", batch, n, e);
    for (int b = 0; b < batch; ++b)
      for (int t = 0; t < n; ++t) {
        double mean = 0, var = 0;
        for (int i = 0; i < e; ++i)
          mean += attention(b, t, i) / e;
        for (int i = 0; i < e; ++i)
          var += (attention(b, t, i) - mean) * (attention(b, t, i) - mean) / e;
        for (int i = 0; i < e; ++i)
          z(b, t, i) = (attention(b, t, i) - mean) / std::sqrt(var + c.eps) * p["norm.weight"][i] +
                       p["norm.bias"][i];
      }
  }
  return host_linear(z, p["out_proj.weight"], bias("out_proj.bias"));
}

}  // namespace dilated::testing

#endif  // DILATED_LAYER_REFERENCE_HPP
