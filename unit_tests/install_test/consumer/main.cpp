// Uses the installed headers end to end: geometry, a strided segment view and the reference.
// Exits non-zero when a value is wrong, so the install test can fail.
#include <DilatedAttention.hpp>

#include <cmath>
#include <cstdio>

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
  std::printf("DilatedAttention %s consumer: %s\n", DILATED_VERSION_STRING, bad ? "FAIL" : "ok");
  return bad;
}
