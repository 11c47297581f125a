// dilated::training::AdamW: torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019) as Kokkos kernels, one per tensor, on any execution space, over
// float, double, half or bf16 parameters. For step t = 1, 2, ... and each value (docs/training.md):
//
//   p <- p (1 - lr weight_decay)
//   m <- beta1 m + (1 - beta1) g              (exp_avg, as torch.lerp)
//   v <- beta2 v + (1 - beta2) g^2            (exp_avg_sq)
//   p <- p - lr / (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// The moments are float (double for double storage); half and bf16 parameters keep an fp32 master
// copy that the update is applied to and rounded from. amsgrad, maximize and per-group options of
// PyTorch are not provided.
//
// The state is allocated on the first step (uninitialised: that step writes it without reading
// it); later steps allocate nothing and do not fence (the step count and the bias corrections
// live on the host). save_state / load_state move the state through .npy files named as
// PyTorch's optimizer state: <name>.exp_avg.npy, <name>.exp_avg_sq.npy, <name>.step.npy, and
// <name>.master.npy for half/bf16.
#ifndef DILATED_ADAMW_HPP
#define DILATED_ADAMW_HPP

#include <Dilated_Compat.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_AdamWKernels.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::training {

// AdamW's hyperparameters, PyTorch's defaults. Checked where an optimizer takes them.
class AdamWOptions {
 public:
  AdamWOptions& set_lr(double lr) {
    lr_ = lr;
    return *this;
  }
  AdamWOptions& set_betas(double beta1, double beta2) {
    beta1_ = beta1;
    beta2_ = beta2;
    return *this;
  }
  AdamWOptions& set_eps(double eps) {
    eps_ = eps;
    return *this;
  }
  AdamWOptions& set_weight_decay(double weight_decay) {
    weight_decay_ = weight_decay;
    return *this;
  }

  double lr() const { return lr_; }
  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  double eps() const { return eps_; }
  double weight_decay() const { return weight_decay_; }

 private:
  double lr_ = 1e-3;
  double beta1_ = 0.9, beta2_ = 0.999;
  double eps_ = 1e-8;
  double weight_decay_ = 1e-2;
};

namespace Impl {

// Throws std::invalid_argument naming the hyperparameter: lr < 0, betas outside [0, 1),
// eps <= 0, weight_decay < 0, or any of them not finite.
inline void check_options(const char* fn, const AdamWOptions& o) {
  check_adamw_hyperparameters(fn, o.lr(), o.beta1(), o.beta2(), o.eps(), o.weight_decay());
}

}  // namespace Impl

template <class T, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class AdamW {
  static_assert(Impl::is_storage_type_v<T>,
                "dilated::training::AdamW<T, MemorySpace>: T must be float, double, "
                "Kokkos::Experimental::half_t or bhalf_t");
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::training::AdamW<T, MemorySpace>: MemorySpace must be a Kokkos memory "
                "space");

 public:
  using value_type = T;
  using state_type = Impl::state_t<T>;  // moments and master weights
  using memory_space = MemorySpace;
  using Tensors = ParameterGradients<T, MemorySpace>;

  // Throws std::invalid_argument naming the hyperparameter that is out of range.
  explicit AdamW(const AdamWOptions& options = {}) : options_(options) {
    Impl::check_options("dilated::training::AdamW", options_);
  }

  const AdamWOptions& options() const { return options_; }
  // For a schedule: the learning rate of the next steps (finite, >= 0).
  void set_lr(double lr) {
    Impl::check_lr("dilated::training::AdamW::set_lr", lr);
    options_.set_lr(lr);
  }
  // Steps taken (or loaded): the t of the last step's bias corrections.
  long step_count() const { return step_count_; }
  // The state the first step allocates for tensors of these sizes (values each), as MomentState
  // does: the two moments (MemoryKind::optimizer_state) and, for half / bf16, the fp32 master
  // copy (MemoryKind::master_weights).
  static MemoryPlan plan_state(const std::vector<std::size_t>& sizes) {
    return Impl::plan_moment_states<state_type, MemorySpace>("dilated::training::AdamW", sizes,
                                                             Impl::needs_master_v<T>);
  }
  // Bytes of optimizer state on the device: 8 per value (16 in double), 12 with master weights.
  std::size_t state_bytes() const {
    std::size_t total = 0;
    for (const auto& s : states_)
      total += s.bytes();
    return total;
  }

  // One AdamW step over `tensors` (the same list, in the same order, every step; the first step
  // or load_state fixes it). Every gradient is read times gradient_scale (in the state type; 1,
  // the default, is PyTorch's step exactly): 1 / the loss scale, times a clipping factor, so that
  // the gradients themselves are never rewritten. Throws std::invalid_argument for a list the
  // state was not made for, a gradient of another length than its parameter, or a gradient_scale
  // that is not finite and > 0; nothing is changed then.
  template <class ExecSpace>
  void step(const ExecSpace& space, const Tensors& tensors, double gradient_scale = 1.0) {
    constexpr const char* fn = "dilated::training::AdamW::step";
    static_assert(dilated::Impl::is_execution_space_v<ExecSpace>,
                  "dilated::training::AdamW::step: the first argument must be a Kokkos "
                  "execution space");
    static_assert(Kokkos::SpaceAccessibility<ExecSpace, MemorySpace>::accessible,
                  "dilated::training::AdamW::step: the tensors' memory space must be accessible "
                  "from the execution space");
    dilated::Impl::ScopedRegion region(fn);
    dilated::Impl::require(std::isfinite(gradient_scale) && gradient_scale > 0, fn,
                           "gradient_scale = ", gradient_scale, " must be finite and > 0");
    const bool first = states_.empty();
    if (first) {
      Impl::check_tensor_list(fn, tensors);
    } else {
      Impl::check_same_tensors(fn, records_, tensors);
    }
    if (first) {
      // Made aside and kept only whole: a state that does not fit (DeviceOutOfMemory) leaves
      // none, and the next step starts afresh.
      std::vector<Impl::MomentState<state_type, MemorySpace>> states;
      states.reserve(tensors.size());
      for (const auto& t : tensors) {
        states.emplace_back("dilated::training::AdamW::" + t.name, t.parameter.extent(0),
                            Impl::needs_master_v<T>);
      }
      records_ = Impl::record_tensors(tensors);
      states_ = std::move(states);
    }
    ++step_count_;
    const auto s = Impl::adamw_scalars<state_type>(
        options_.lr(), options_.beta1(), options_.beta2(), options_.eps(), options_.weight_decay(),
        step_count_, first, gradient_scale);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      Impl::adamw_tensor_step(space, "dilated::training::AdamW::step", tensors[i], states_[i], s);
    }
  }
  void step(const Tensors& tensors, double gradient_scale = 1.0) {
    step(typename MemorySpace::execution_space(), tensors, gradient_scale);
  }

  // Writes the state of every tensor into `directory` (which must exist) once the work on
  // `space` is done: <name>.exp_avg.npy, <name>.exp_avg_sq.npy (float32, float64 for double),
  // <name>.step.npy (a float64 scalar), <name>.master.npy (half/bf16). Each file goes to a
  // temporary and is renamed once all are written. Throws std::invalid_argument before the
  // first step (there is no state).
  template <class ExecSpace>
  void save_state(const ExecSpace& space, const std::string& directory) const {
    constexpr const char* fn = "dilated::training::AdamW::save_state";
    dilated::Impl::ScopedRegion region(fn);
    dilated::Impl::require(!states_.empty(), fn, "no state to save before the first step");
    dilated::Impl::fence(space, fn);
    Impl::StateWriter writer(directory);
    const double step = static_cast<double>(step_count_);
    for (std::size_t i = 0; i < states_.size(); ++i) {
      Impl::write_moment_state(writer, records_[i], states_[i]);
      writer.write(records_[i].name + ".step.npy", {}, std::vector<double>{step});
    }
    writer.commit(fn);
  }

  // Reads the state save_state wrote for `tensors` from `directory`, replacing any state this
  // optimizer holds; the next step continues from it as if it had not stopped. Throws
  // npy::FormatError (missing or malformed file) or std::invalid_argument (another shape, a value
  // out of range, steps that differ) before anything is changed.
  template <class ExecSpace>
  void load_state(const ExecSpace& space, const Tensors& tensors, const std::string& directory) {
    constexpr const char* fn = "dilated::training::AdamW::load_state";
    dilated::Impl::ScopedRegion region(fn);
    Impl::check_tensor_list(fn, tensors);
    const auto records = Impl::record_tensors(tensors);
    const long step = Impl::read_step_count(fn, directory, records);
    std::vector<Impl::MomentFiles> files;
    for (const auto& r : records)
      files.push_back(Impl::read_moment_state(fn, directory, r, Impl::needs_master_v<T>));
    dilated::Impl::fence(space, fn);  // no step in flight reads the state being replaced
    std::vector<Impl::MomentState<state_type, MemorySpace>> states;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      states.emplace_back("dilated::training::AdamW::" + records[i].name,
                          tensors[i].parameter.extent(0), Impl::needs_master_v<T>);
      Impl::copy_moment_state(files[i], states.back());
    }
    states_ = std::move(states);
    records_ = records;
    step_count_ = step;
  }

 private:
  AdamWOptions options_;
  long step_count_ = 0;
  std::vector<Impl::TensorRecord> records_;
  std::vector<Impl::MomentState<state_type, MemorySpace>> states_;
};

}  // namespace dilated::training

#endif  // DILATED_ADAMW_HPP
