// The seed's two transformer blocks in double on the host, composed of plain loops and the layer
// reference (host_layer): LN1, the attention (the multihead layer for the Standard block; the
// block's own projections, the exact attention and its output projection for the Custom one),
// the residual, LN2, the exact-GELU feed-forward and its residual. The oracle of the block tests.
#ifndef DILATED_BLOCK_REFERENCE_HPP
#define DILATED_BLOCK_REFERENCE_HPP

#include <Dilated_LayerReference.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace dilated::testing {

// y = x W^T + b, W (out, in) in C order.
inline Host3 host_linear_rect(const Host3& x, const std::vector<double>& w,
                              const std::vector<double>& bias) {
  const int in = x.extent(2), out = static_cast<int>(bias.size());
  Host3 y("dilated::test::linear", x.extent(0), x.extent(1), out);
  for (std::size_t b = 0; b < x.extent(0); ++b)
    for (std::size_t t = 0; t < x.extent(1); ++t)
      for (int o = 0; o < out; ++o) {
        double sum = bias[o];
        for (int i = 0; i < in; ++i)
          sum += x(b, t, i) * w[o * in + i];
        y(b, t, o) = sum;
      }
  return y;
}

inline Host3 host_layer_norm(const Host3& x, const std::vector<double>& gamma,
                             const std::vector<double>& beta, double eps = 1e-5) {
  const int e = x.extent(2);
  Host3 y("dilated::test::layer_norm", x.extent(0), x.extent(1), e);
  for (std::size_t b = 0; b < x.extent(0); ++b)
    for (std::size_t t = 0; t < x.extent(1); ++t) {
      double mean = 0, var = 0;
      for (int i = 0; i < e; ++i)
        mean += x(b, t, i) / e;
      for (int i = 0; i < e; ++i)
        var += (x(b, t, i) - mean) * (x(b, t, i) - mean) / e;
      for (int i = 0; i < e; ++i)
        y(b, t, i) = (x(b, t, i) - mean) / std::sqrt(var + eps) * gamma[i] + beta[i];
    }
  return y;
}

inline Host3 host_add(const Host3& a, const Host3& b) {
  Host3 y("dilated::test::sum", a.extent(0), a.extent(1), a.extent(2));
  for (std::size_t i = 0; i < a.size(); ++i)
    y.data()[i] = a.data()[i] + b.data()[i];
  return y;
}

// The block for x (b, n, E): `custom` selects CustomTransformerBlock, else Standard. Parameter
// names as the blocks' named_tensors(). `tanh_gelu`: PyTorch's GELU(approximate='tanh') in the
// feed-forward, else the exact (erf) one.
inline Host3 host_block(bool custom, const LayerConfig& c, const HostParameters& p, const Host3& x,
                        bool causal, bool tanh_gelu = false) {
  const Host3 n1 = host_layer_norm(x, p["norm1.weight"], p["norm1.bias"]);
  HostParameters attention;
  const std::string prefix = custom ? "" : "attention.";
  for (const char* name :
       {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
        "v_proj.bias", "out_proj.weight", "out_proj.bias", "norm.weight", "norm.bias"}) {
    if (p.has(prefix + name)) attention.tensors[name] = p[prefix + name];
  }
  LayerConfig layer = c;
  layer.layer_norm = !custom;
  const Host3 x1 = host_add(x, host_layer(layer, attention, n1, n1, n1, causal));
  const Host3 n2 = host_layer_norm(x1, p["norm2.weight"], p["norm2.bias"]);
  Host3 h = host_linear_rect(n2, p["ffn.0.weight"], p["ffn.0.bias"]);
  for (std::size_t i = 0; i < h.size(); ++i) {
    const double v = h.data()[i];
    h.data()[i] =
        tanh_gelu ? 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)))
                  : 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  }
  return host_add(x1, host_linear_rect(h, p["ffn.2.weight"], p["ffn.2.bias"]));
}

}  // namespace dilated::testing

#endif  // DILATED_BLOCK_REFERENCE_HPP
