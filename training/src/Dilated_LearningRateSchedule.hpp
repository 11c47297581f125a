// dilated::training::WarmupCosineSchedule: the learning rate of step s (0 for the first step),
// linear warm-up to peak_lr over warmup_steps, then a half cosine from peak_lr down to min_lr at
// total_steps, then min_lr:
//
//   s <  W:       peak_lr (s + 1) / W
//   W <= s < T:   min_lr + (peak_lr - min_lr) (1 + cos(pi (s - W) / (T - W))) / 2
//   s >= T:       min_lr
//
// (W = warmup_steps, T = total_steps.) The first step already learns (peak_lr / W rather than
// 0); the rate reaches peak_lr at s = W - 1 and s = W. A value type with chainable setters; the
// values are checked when a rate is asked for. Host arithmetic only:
//
//   auto schedule = WarmupCosineSchedule().set_peak_lr(6e-4).set_min_lr(6e-5)
//                       .set_warmup_steps(100).set_total_steps(3000);
//   optimizer.set_lr(schedule.lr(step));
#ifndef DILATED_LEARNING_RATE_SCHEDULE_HPP
#define DILATED_LEARNING_RATE_SCHEDULE_HPP

#include <impl/Dilated_Error.hpp>

#include <cmath>

namespace dilated::training {

class WarmupCosineSchedule {
 public:
  WarmupCosineSchedule& set_peak_lr(double lr) {
    peak_lr_ = lr;
    return *this;
  }
  WarmupCosineSchedule& set_min_lr(double lr) {
    min_lr_ = lr;
    return *this;
  }
  WarmupCosineSchedule& set_warmup_steps(long steps) {
    warmup_steps_ = steps;
    return *this;
  }
  WarmupCosineSchedule& set_total_steps(long steps) {
    total_steps_ = steps;
    return *this;
  }

  double peak_lr() const { return peak_lr_; }
  double min_lr() const { return min_lr_; }
  long warmup_steps() const { return warmup_steps_; }
  long total_steps() const { return total_steps_; }

  // The rate of step `step` (>= 0). Throws std::invalid_argument naming the value unless
  // 0 <= min_lr <= peak_lr (finite), 0 <= warmup_steps <= total_steps, total_steps >= 1, and
  // step >= 0.
  double lr(long step) const {
    constexpr const char* fn = "dilated::training::WarmupCosineSchedule::lr";
    using dilated::Impl::require;
    require(std::isfinite(peak_lr_) && peak_lr_ >= 0, fn, "peak_lr = ", peak_lr_,
            " must be finite and >= 0");
    require(std::isfinite(min_lr_) && min_lr_ >= 0 && min_lr_ <= peak_lr_, fn, "min_lr = ", min_lr_,
            " must be finite and in [0, peak_lr = ", peak_lr_, "]");
    require(total_steps_ >= 1, fn, "total_steps = ", total_steps_, " must be >= 1");
    require(warmup_steps_ >= 0 && warmup_steps_ <= total_steps_, fn,
            "warmup_steps = ", warmup_steps_, " must be in [0, total_steps = ", total_steps_, "]");
    require(step >= 0, fn, "step = ", step, " must be >= 0");
    if (step < warmup_steps_) {
      return peak_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_steps_);
    }
    if (step >= total_steps_) return min_lr_;
    constexpr double pi = 3.14159265358979323846;
    const double progress = static_cast<double>(step - warmup_steps_) /
                            static_cast<double>(total_steps_ - warmup_steps_);
    return min_lr_ + (peak_lr_ - min_lr_) * 0.5 * (1.0 + std::cos(pi * progress));
  }
  double operator()(long step) const { return lr(step); }

 private:
  double peak_lr_ = 1e-3;
  double min_lr_ = 0.0;
  long warmup_steps_ = 0;
  long total_steps_ = 1;
};

}  // namespace dilated::training

#endif  // DILATED_LEARNING_RATE_SCHEDULE_HPP
