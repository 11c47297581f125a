// PyTorch's nn.GELU(approximate=...) and its derivative, elementwise over dense row-major
// matrices. The exact form (approximate='none', nn.GELU()'s default and the blocks'):
//
//   gelu(x)  = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
//   gelu'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// and the tanh approximation (approximate='tanh', GPT-2's), u = sqrt(2 / pi) (x + 0.044715 x^3):
//
//   gelu(x)  = x (1 + tanh u) / 2
//   gelu'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2 / pi) (1 + 3 * 0.044715 x^2) / 2
//
// The tanh form is the one cuBLASLt's GELU epilogues compute, so on CUDA it can live in the
// products' epilogues (Dilated_Gemm.hpp: gemm_bias_gelu, gemm_dgelu) instead of passes of its own.
// In float (double for double storage). Memory-bound: one flat pass, 16 bytes a thread where the
// buffers allow it (Pack), so each value is read and written once. On host spaces in float the
// pass is a thread per chunk of elements over a vectorised loop whose erf, exp and tanh are
// straight-line arithmetic (impl/Dilated_HostMath.hpp): libm's erff, one call an element, made
// the GELU the largest elementwise cost of a CPU training step.
#ifndef DILATED_GELU_HPP
#define DILATED_GELU_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_Gemm.hpp>
#include <impl/Dilated_Error.hpp>
#include <impl/Dilated_HostMath.hpp>
#include <impl/Dilated_IndexRange.hpp>
#include <impl/Dilated_RowPieces.hpp>

#include <Kokkos_Core.hpp>

#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace dilated {

// Which GELU a feed-forward computes: PyTorch's nn.GELU(approximate='none') or ('tanh').
enum class GeluApproximation { none, tanh };

// PyTorch's names: "none", "tanh".
inline const char* to_string(GeluApproximation approximation) {
  return approximation == GeluApproximation::tanh ? "tanh" : "none";
}
inline GeluApproximation gelu_approximation_from_string(std::string_view name) {
  if (name == "none") return GeluApproximation::none;
  if (name == "tanh") return GeluApproximation::tanh;
  throw std::invalid_argument("dilated: gelu = '" + std::string(name) +
                              "' is not one of 'none', 'tanh'");
}

namespace Impl {

template <class Acc>
KOKKOS_INLINE_FUNCTION Acc gelu_value(Acc x, GeluApproximation approximation) {
  if (approximation == GeluApproximation::tanh) {
    const Acc u = Acc(0.79788456080286535588) * (x + Acc(0.044715) * x * x * x);
    return Acc(0.5) * x * (Acc(1) + math::tanh(u));
  }
  return Acc(0.5) * x * (Acc(1) + math::erf(x * Acc(0.70710678118654752440)));
}

template <class Acc>
KOKKOS_INLINE_FUNCTION Acc gelu_derivative(Acc x, GeluApproximation approximation) {
  if (approximation == GeluApproximation::tanh) {
    const Acc k = Acc(0.79788456080286535588);
    const Acc t = math::tanh(k * (x + Acc(0.044715) * x * x * x));
    return Acc(0.5) * (Acc(1) + t) +
           Acc(0.5) * x * (Acc(1) - t * t) * k * (Acc(1) + Acc(3 * 0.044715) * x * x);
  }
  const Acc cdf = Acc(0.5) * (Acc(1) + math::erf(x * Acc(0.70710678118654752440)));
  const Acc pdf = Acc(0.39894228040143267794) * math::exp(Acc(-0.5) * x * x);
  return cdf + x * pdf;
}

// The same two functions in float for host loops that vectorise (host_math's erf, exp and
// 1 +- tanh; erf within 1.5e-7 of the exact). 1 + tanh(u) and 1 - tanh(u) are taken whole: they
// keep their relative accuracy where they are small, and 1 - tanh^2 = (1 + tanh)(1 - tanh).
inline float gelu_value_host(float x, GeluApproximation approximation) {
  if (approximation == GeluApproximation::tanh) {
    const float u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);
    return 0.5f * x * host_math::one_plus_tanh(u);
  }
  return 0.5f * x * (1.f + host_math::erf(x * 0.70710678118654752440f));
}

inline float gelu_derivative_host(float x, GeluApproximation approximation) {
  if (approximation == GeluApproximation::tanh) {
    const float k = 0.79788456080286535588f;
    const auto t = host_math::one_plus_minus_tanh(k * (x + 0.044715f * x * x * x));
    return 0.5f * t.plus + 0.5f * x * t.minus * t.plus * k * (1.f + 3 * 0.044715f * x * x);
  }
  const float cdf = 0.5f * (1.f + host_math::erf(x * 0.70710678118654752440f));
  const float pdf = 0.39894228040143267794f * host_math::exp_nonpositive(-0.5f * x * x);
  return cdf + x * pdf;
}

// Whether ExecSpace runs the host float loops above for storage T.
template <class ExecSpace, class T>
inline constexpr bool gelu_host_loops_v =
    std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>&&
        std::is_same_v<gemm_accumulation_t<T>, float>;

// Elements per host thread's piece: 16 KiB of floats, so that the loop runs long and the
// pieces are many (a (8192, 3072) feed-forward matrix is 6144 of them).
inline constexpr long gelu_host_chunk = 4096;

// On the host: out[i] = f(in[i]) (forward) or out[i] = dg[i] f(in[i]) (backward, dg not null)
// for i < size, a thread per chunk, the loop in float and vectorised; out may alias in or dg.
template <class T, class ExecSpace, class F>
void gelu_host_pass(const ExecSpace& space, const char* label, const T* in, const T* dg, T* out,
                    long size, const F& f) {
  const long chunks = (size + gelu_host_chunk - 1) / gelu_host_chunk;
  Kokkos::parallel_for(
      // A host lambda (not KOKKOS_LAMBDA): host_math is not device code.
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, chunks), [=](long c) {
        const long begin = c * gelu_host_chunk;
        const long end = begin + gelu_host_chunk < size ? begin + gelu_host_chunk : size;
        if (dg) {
          DILATED_HOST_SIMD
          for (long i = begin; i < end; ++i)
            out[i] = static_cast<T>(static_cast<float>(dg[i]) * f(static_cast<float>(in[i])));
        } else {
          DILATED_HOST_SIMD
          for (long i = begin; i < end; ++i)
            out[i] = static_cast<T>(f(static_cast<float>(in[i])));
        }
      });
}

template <class T, class ExecSpace>
void gelu_host(const ExecSpace& space, const char* label, const T* in, const T* dg, T* out,
               long size, GeluApproximation approximation, bool derivative) {
  // One loop per function: the approximation is not tested per element.
  const auto run = [&](const auto& f) { gelu_host_pass(space, label, in, dg, out, size, f); };
  if (derivative) {
    if (approximation == GeluApproximation::tanh)
      run([](float x) { return gelu_derivative_host(x, GeluApproximation::tanh); });
    else
      run([](float x) { return gelu_derivative_host(x, GeluApproximation::none); });
  } else {
    if (approximation == GeluApproximation::tanh)
      run([](float x) { return gelu_value_host(x, GeluApproximation::tanh); });
    else
      run([](float x) { return gelu_value_host(x, GeluApproximation::none); });
  }
}

// A dense matrix's values as one flat array (rows contiguous, no padding).
template <class View>
bool is_flat_matrix(const View& v) {
  return v.extent(0) <= 1 || v.stride(0) == v.extent(1);
}

// Pack width for the flat arrays: 16 bytes when every pointer is 16-byte aligned and the length a
// whole number of packs.
template <class T, class... Pointers>
int flat_pack_width(long size, const Pointers*... pointers) {
  constexpr int W = row_pack_width<T>();
  return W > 1 && size % W == 0 && (pack_aligned<T, W>(pointers) && ...) ? W : 1;
}

template <class T, int W, class ExecSpace>
void gelu_forward_flat(const ExecSpace& space, const T* hp, T* gp, long size,
                       GeluApproximation approximation) {
  using Acc = gemm_accumulation_t<T>;
  using P = Pack<T, W>;
  const P* in = reinterpret_cast<const P*>(hp);
  P* out = reinterpret_cast<P*>(gp);
  // A 64-bit index: (n, 4E) is past 2^32 elements at the lengths the models train on.
  Kokkos::parallel_for(
      "dilated::gelu::forward", index_range(space, 0, size / W), KOKKOS_LAMBDA(long p) {
        const P v = in[p];
        P o;
        for (int w = 0; w < W; ++w)
          o.v[w] = static_cast<T>(gelu_value(static_cast<Acc>(v.v[w]), approximation));
        out[p] = o;
      });
}

template <class T, int W, class ExecSpace>
void gelu_backward_flat(const ExecSpace& space, const T* hp, const T* dgp, T* dhp, long size,
                        GeluApproximation approximation) {
  using Acc = gemm_accumulation_t<T>;
  using P = Pack<T, W>;
  const P* h = reinterpret_cast<const P*>(hp);
  const P* dg = reinterpret_cast<const P*>(dgp);
  P* dh = reinterpret_cast<P*>(dhp);
  Kokkos::parallel_for(
      "dilated::gelu::backward", index_range(space, 0, size / W), KOKKOS_LAMBDA(long p) {
        const P x = h[p], d = dg[p];
        P o;
        for (int w = 0; w < W; ++w)
          o.v[w] = static_cast<T>(static_cast<Acc>(d.v[w]) *
                                  gelu_derivative(static_cast<Acc>(x.v[w]), approximation));
        dh[p] = o;
      });
}

// g = gelu(h); g may be h (in place). Both dense (rows, cols) matrices of one storage type.
template <class ExecSpace, class H, class G>
void gelu_forward(const ExecSpace& space, const H& h, const G& g,
                  GeluApproximation approximation = GeluApproximation::none) {
  using T = typename G::non_const_value_type;
  static_assert(std::is_same_v<typename H::non_const_value_type, T>,
                "dilated::Impl::gelu_forward: h and g must share the storage type");
  constexpr const char* fn = "dilated::Impl::gelu_forward";
  require(h.extent(0) == g.extent(0) && h.extent(1) == g.extent(1), fn, "g is (", g.extent(0), ", ",
          g.extent(1), "), h is (", h.extent(0), ", ", h.extent(1), ")");
  require(is_flat_matrix(h) && is_flat_matrix(g), fn, "h and g must be dense matrices");
  const long size = static_cast<long>(h.extent(0) * h.extent(1));
  if (size == 0) return;
  if constexpr (gelu_host_loops_v<ExecSpace, T>) {
    gelu_host(space, "dilated::gelu::forward", h.data(), static_cast<const T*>(nullptr), g.data(),
              size, approximation, false);
    return;
  }
  if (flat_pack_width<T>(size, h.data(), g.data()) > 1) {
    gelu_forward_flat<T, row_pack_width<T>()>(space, h.data(), g.data(), size, approximation);
  } else {
    gelu_forward_flat<T, 1>(space, h.data(), g.data(), size, approximation);
  }
}

// dh = dg gelu'(h); dh may be dg (in place). h, dg, dh dense matrices of one shape.
template <class ExecSpace, class H, class DG, class DH>
void gelu_backward(const ExecSpace& space, const H& h, const DG& dg, const DH& dh,
                   GeluApproximation approximation = GeluApproximation::none) {
  using T = typename DH::non_const_value_type;
  static_assert(std::is_same_v<typename H::non_const_value_type, T> &&
                    std::is_same_v<typename DG::non_const_value_type, T>,
                "dilated::Impl::gelu_backward: h, dg and dh must share the storage type");
  constexpr const char* fn = "dilated::Impl::gelu_backward";
  require(h.extent(0) == dg.extent(0) && h.extent(1) == dg.extent(1) &&
              h.extent(0) == dh.extent(0) && h.extent(1) == dh.extent(1),
          fn, "h, dg and dh must have one shape");
  require(is_flat_matrix(h) && is_flat_matrix(dg) && is_flat_matrix(dh), fn,
          "h, dg and dh must be dense matrices");
  const long size = static_cast<long>(h.extent(0) * h.extent(1));
  if (size == 0) return;
  if constexpr (gelu_host_loops_v<ExecSpace, T>) {
    gelu_host(space, "dilated::gelu::backward", h.data(), dg.data(), dh.data(), size, approximation,
              true);
    return;
  }
  if (flat_pack_width<T>(size, h.data(), dg.data(), dh.data()) > 1) {
    gelu_backward_flat<T, row_pack_width<T>()>(space, h.data(), dg.data(), dh.data(), size,
                                               approximation);
  } else {
    gelu_backward_flat<T, 1>(space, h.data(), dg.data(), dh.data(), size, approximation);
  }
}

}  // namespace Impl
}  // namespace dilated

#endif  // DILATED_GELU_HPP
