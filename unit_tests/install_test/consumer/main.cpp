// Uses the installed headers end to end: geometry, a strided segment view, the reference and the
// multihead layer (docs/layers.md's snippet). Exits non-zero when a value is wrong, so the
// install test can fail.
#include <DilatedAttention.hpp>

#include <cmath>
#include <cstdio>

// docs/layers.md: self-attention through the layer on the host, forward and backward.
int layer_snippet() {
  using Layer = dilated::MultiheadDilatedAttention<dilated::Improved, double, Kokkos::HostSpace>;
  // embed_dim, num_heads, segment_lengths, dilation_rates, dropout, bias, layer_norm,
  // layer_norm_eps, gamma_init, semantics, init_seed
  const Layer layer(64, 4, {32, 64}, {1, 2}, 0.0, true, true, 1e-5, 1.0,
                    dilated::Semantics::longnet, 7);
  Kokkos::View<double***, Kokkos::HostSpace> x("x", 2, 100, 64), dout("dout", 2, 100, 64);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x.data()[i] = std::sin(0.1 * i);
    dout.data()[i] = std::cos(0.3 * i);
  }
  const dilated::ForwardOptions call{/*is_causal=*/true, /*training=*/false, /*seed=*/0};
  const auto [out, weights] = layer(x, x, x, call);        // the seed's (output, None)
  const auto grads = layer.backward(x, x, x, dout, call);  // recomputes the forward
  // grads.query = d<out, dout>/dx (one input: self-attention); grads.parameters has the
  // layer's tensors: grads.parameters.named_tensors()[i] is the gradient of
  // layer.parameters().named_tensors()[i] ("q_proj.weight", ..., "out_proj.bias").
  int bad = !grads.self_attention || grads.parameters.named_tensors().size() != 10;
  for (std::size_t i = 0; i < out.size(); ++i)
    bad += !std::isfinite(out.data()[i]) || !std::isfinite(grads.query.data()[i]);
  return bad;
}

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const dilated::Geometry g({2, 4}, {1, 2}, 1, dilated::Semantics::longnet);
  Kokkos::View<double****, Kokkos::HostSpace> q("q", 1, 4, 1, 1), v("v", 1, 4, 1, 1),
      out("out", 1, 4, 1, 1);
  for (int p = 0; p < 4; ++p)
    v(0, p, 0, 0) = p + 1;
  dilated::reference(g, q, q, v, out);
  // q = k = 0: uniform weights over the multiset union of the branches' keys.
  const double expected[4] = {1.75, 1.5, 2.75, 3.5};
  int bad = 0;
  for (int p = 0; p < 4; ++p)
    bad += std::abs(out(0, p, 0, 0) - expected[p]) > 1e-14;
  const auto seg = dilated::segment_view(v, g, g.head_blocks()[1], 0);
  bad += seg.extent(1) != 2 || seg(0, 1, 0, 0) != 3.0;
  bad += layer_snippet();
  std::printf("DilatedAttention %s consumer: %s\n", DILATED_VERSION_STRING, bad ? "FAIL" : "ok");
  return bad;
}
