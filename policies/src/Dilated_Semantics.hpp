// Which function "dilated attention" means: the two semantics of docs/semantics.md.
#ifndef DILATED_SEMANTICS_HPP
#define DILATED_SEMANTICS_HPP

#include <stdexcept>
#include <string>
#include <string_view>

namespace dilated {

// grouped: heads are split into one contiguous group per (segment, dilation) branch and the
//          output is divided by the number of branches (the seed's PyTorch peers).
// longnet: every head takes part in every branch, with a per-head offset, and branches are
//          merged by their log-sum-exp (microsoft/torchscale, the LongNet paper).
enum class Semantics { grouped, longnet };

inline constexpr std::string_view to_string(Semantics s) {
  return s == Semantics::grouped ? "grouped" : "longnet";
}

// Parses "grouped" or "longnet"; anything else throws std::invalid_argument naming the value.
inline Semantics semantics_from_string(std::string_view name) {
  if (name == "grouped") return Semantics::grouped;
  if (name == "longnet") return Semantics::longnet;
  throw std::invalid_argument("dilated: semantics = '" + std::string(name) +
                              "' is not one of 'grouped', 'longnet'");
}

}  // namespace dilated

#endif  // DILATED_SEMANTICS_HPP
