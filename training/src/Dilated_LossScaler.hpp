// dilated::training::DynamicLossScaler: dynamic loss scaling for half-precision training, as
// PyTorch's torch.amp.GradScaler (Micikevicius et al., "Mixed Precision Training", ICLR 2018):
// the loss's gradients are computed times `scale` so that small ones stay above half's
// subnormal range; a step whose gradients overflow (a non-finite gradient norm or loss) is
// skipped and the scale multiplied by backoff_factor (0.5); after growth_interval (2000)
// consecutive good steps it is multiplied by growth_factor (2). Initial scale 2^16.
//
// The gradients are never unscaled in place (in half, small values would flush to zero): the
// optimizers read them times 1 / scale (and a clipping factor) in fp32, see gradient_factor().
// For float, double and bf16 storage (bf16 has float's range) scaling is off: scale 1.
#ifndef DILATED_LOSS_SCALER_HPP
#define DILATED_LOSS_SCALER_HPP

#include <Dilated_Compat.hpp>
#include <impl/Dilated_Error.hpp>

#include <cmath>
#include <type_traits>

namespace dilated::training {

class DynamicLossScaler {
 public:
  // Throws std::invalid_argument naming the argument: init_scale not finite or <= 0,
  // growth_factor <= 1, backoff_factor outside (0, 1), growth_interval < 1.
  explicit DynamicLossScaler(bool enabled, double init_scale = 65536.0, double growth_factor = 2.0,
                             double backoff_factor = 0.5, long growth_interval = 2000)
      : enabled_(enabled),
        scale_(enabled ? init_scale : 1.0),
        growth_(growth_factor),
        backoff_(backoff_factor),
        interval_(growth_interval) {
    constexpr const char* fn = "dilated::training::DynamicLossScaler";
    dilated::Impl::require(std::isfinite(init_scale) && init_scale > 0, fn,
                           "init_scale = ", init_scale, " must be finite and > 0");
    dilated::Impl::require(std::isfinite(growth_factor) && growth_factor > 1, fn,
                           "growth_factor = ", growth_factor, " must be finite and > 1");
    dilated::Impl::require(backoff_factor > 0 && backoff_factor < 1, fn,
                           "backoff_factor = ", backoff_factor, " must be in (0, 1)");
    dilated::Impl::require(growth_interval >= 1, fn, "growth_interval = ", growth_interval,
                           " must be >= 1");
  }

  // On for half storage (its range, 6e-5 .. 65504, is what scaling is for), off otherwise.
  template <class T>
  static DynamicLossScaler for_storage() {
    return DynamicLossScaler(std::is_same_v<T, Kokkos::Experimental::half_t> &&
                             !DILATED_HALF_IS_FLOAT);
  }

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  long skipped_steps() const { return skipped_; }
  long good_steps() const { return good_; }

  // After a backward whose gradients had the (scaled) global norm `scaled_norm` (and whose loss
  // was finite: pass a NaN otherwise): true when the step is to be taken. Updates the scale.
  bool update(double scaled_norm) {
    if (!std::isfinite(scaled_norm)) {
      ++skipped_;
      good_ = 0;
      if (enabled_) scale_ *= backoff_;
      return false;
    }
    if (enabled_ && ++good_ >= interval_) {
      scale_ *= growth_;
      good_ = 0;
    }
    return true;
  }

  // The factor the optimizer applies to every gradient it reads: 1 / scale, times
  // max_norm / (norm + 1e-6) when the unscaled norm exceeds max_norm (torch's
  // clip_grad_norm_; max_norm <= 0: no clipping).
  double gradient_factor(double scaled_norm, double max_norm) const {
    const double norm = scaled_norm / scale_;
    double factor = 1.0 / scale_;
    if (max_norm > 0 && norm > max_norm) factor *= max_norm / (norm + 1e-6);
    return factor;
  }

  // The state a checkpoint keeps, and its restore.
  void restore(double scale, long good_steps, long skipped_steps) {
    dilated::Impl::require(
        std::isfinite(scale) && scale > 0 && good_steps >= 0 && skipped_steps >= 0,
        "dilated::training::DynamicLossScaler::restore", "scale = ", scale,
        ", good_steps = ", good_steps, ", skipped_steps = ", skipped_steps, ": not a scaler state");
    scale_ = scale;
    good_ = good_steps;
    skipped_ = skipped_steps;
  }

 private:
  bool enabled_;
  double scale_, growth_, backoff_;
  long interval_;
  long good_ = 0, skipped_ = 0;
};

}  // namespace dilated::training

#endif  // DILATED_LOSS_SCALER_HPP
