// Floating-point traps off for a scope: the test main traps FE_INVALID, and a test that plants a
// NaN or an infinity in its data raises it on purpose (in the kernels' and the reference's
// comparisons).
#ifndef DILATED_TEST_FLOATING_POINT_TRAPS_HPP
#define DILATED_TEST_FLOATING_POINT_TRAPS_HPP

#include <cfenv>

namespace dilated::testing {

class NoFloatingPointTraps {
 public:
  NoFloatingPointTraps() { std::feholdexcept(&saved_); }
  ~NoFloatingPointTraps() { std::fesetenv(&saved_); }
  NoFloatingPointTraps(const NoFloatingPointTraps&) = delete;
  NoFloatingPointTraps& operator=(const NoFloatingPointTraps&) = delete;

 private:
  std::fenv_t saved_;
};

}  // namespace dilated::testing

#endif  // DILATED_TEST_FLOATING_POINT_TRAPS_HPP
