// dilated::training::Trainer<Model, Optimizer>: one training step of a LanguageModel with AdamW or
// AdamW8bit, mixed precision included:
//
//   loss, grads = model.forward_backward(ids, targets, loss scale)     (NonFiniteLoss: skipped)
//   norm        = global norm of the scaled gradients / scale
//   skip the step when the norm is not finite (an overflow): the scale is lowered (half only)
//   optimizer.step(lr = schedule(step), gradients read times 1/scale x clip factor, in fp32)
//
// The gradients are the model's Gradients kept by the trainer (allocated once); the tensor list
// the optimizer steps is built once from them. save() / load() write and read a whole checkpoint
// (model, optimizer state, the trainer's counters and the caller's values) as one directory,
// replaced whole (CheckpointTransaction); a loaded run takes the step the uninterrupted one would.
#ifndef DILATED_TRAINER_HPP
#define DILATED_TRAINER_HPP

#include <Dilated_Checkpoint.hpp>
#include <Dilated_CrossEntropy.hpp>
#include <Dilated_GradientClipping.hpp>
#include <Dilated_LearningRateSchedule.hpp>
#include <Dilated_LossScaler.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_Error.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace dilated::training {

struct TrainerOptions {
  double max_norm = 1.0;  // global-norm clipping (<= 0: none)
  WarmupCosineSchedule schedule = WarmupCosineSchedule();
};

// What one step did.
struct StepResult {
  double loss = 0;        // the mean cross-entropy (NaN when not finite)
  double grad_norm = 0;   // of the unscaled gradients, before clipping (NaN / inf on overflow)
  double lr = 0;          // the learning rate of the step (0 when skipped)
  double loss_scale = 1;  // the scale this step's gradients were computed with
  bool taken = false;     // false: skipped (overflow or a non-finite loss)
};

template <class Model, class Optimizer>
class Trainer {
 public:
  using T = typename Model::value_type;
  using MemorySpace = typename Model::memory_space;
  using Ids = typename Model::Ids;

  Trainer(Model& model, Optimizer& optimizer, const TrainerOptions& options,
          DynamicLossScaler scaler = DynamicLossScaler::for_storage<T>())
      : model_(model), optimizer_(optimizer), options_(options), scaler_(scaler) {
    model_.ensure_gradients(grads_);
    tensors_ = pair_gradients(model_.named_tensors(), model_.named_tensors(grads_));
  }

  const typename Model::Gradients& gradients() const { return grads_; }
  const ParameterGradients<T, MemorySpace>& tensors() const { return tensors_; }
  const DynamicLossScaler& scaler() const { return scaler_; }
  long steps_taken() const { return optimizer_.step_count(); }
  long steps_attempted() const { return attempted_; }

  template <class ExecSpace>
  StepResult step(const ExecSpace& space, const Ids& ids, const Ids& targets) {
    dilated::Impl::ScopedRegion region("dilated::training::Trainer::step");
    StepResult r;
    r.loss_scale = scaler_.scale();
    ++attempted_;
    double scaled_norm = std::numeric_limits<double>::quiet_NaN();
    try {
      r.loss = model_.forward_backward(space, ids, targets, grads_, r.loss_scale);
      scaled_norm = grad_norm(space, tensors_, norm_workspace_);
    } catch (const dilated::NonFiniteLoss& e) {
      r.loss = e.loss();
    }
    r.grad_norm = scaled_norm / r.loss_scale;
    const double factor = scaler_.gradient_factor(scaled_norm, options_.max_norm);
    r.taken = scaler_.update(scaled_norm);
    if (r.taken) {
      r.lr = options_.schedule.lr(optimizer_.step_count());
      optimizer_.set_lr(r.lr);
      optimizer_.step(space, tensors_, factor);
    }
    return r;
  }

  // The checkpoint: the model's tensors, the optimizer's state (after its first step), and
  // trainer.npy = [steps attempted, loss scale, good steps, skipped steps, extra...].
  template <class ExecSpace>
  void save(const ExecSpace& space, const std::string& directory,
            const std::vector<double>& extra = {}) const {
    CheckpointTransaction checkpoint(directory);
    save_tensors(space, model_.named_tensors(), checkpoint.path());
    if (optimizer_.step_count() > 0) optimizer_.save_state(space, checkpoint.path());
    std::vector<double> values{
        static_cast<double>(attempted_), scaler_.scale(), static_cast<double>(scaler_.good_steps()),
        static_cast<double>(scaler_.skipped_steps()), static_cast<double>(optimizer_.step_count())};
    values.insert(values.end(), extra.begin(), extra.end());
    save_values(checkpoint.path(), "trainer.npy", values);
    checkpoint.commit();
  }

  // Reads what save() wrote (with `extra_count` extra values, returned). Throws (npy::FormatError,
  // std::invalid_argument naming the file) before anything changes for a missing file or a
  // checkpoint of another model shape.
  template <class ExecSpace>
  std::vector<double> load(const ExecSpace& space, const std::string& directory,
                           std::size_t extra_count = 0) {
    const std::vector<double> values = load_values(directory, "trainer.npy", 5 + extra_count);
    const auto parameters = model_.named_tensors();
    // Every model file is read and checked before the optimizer's state is touched.
    std::vector<std::vector<double>> files;
    for (const auto& t : parameters)
      files.push_back(Impl::read_state_file("dilated::training::Trainer::load", directory,
                                            t.name + ".npy", t.shape));
    if (values[4] > 0) optimizer_.load_state(space, tensors_, directory);
    dilated::Impl::fence(space, "dilated::training::Trainer::load");
    for (std::size_t i = 0; i < parameters.size(); ++i)
      Impl::copy_to_view(files[i], parameters[i].values);
    scaler_.restore(values[1], static_cast<long>(values[2]), static_cast<long>(values[3]));
    attempted_ = static_cast<long>(values[0]);
    return std::vector<double>(values.begin() + 5, values.end());
  }

 private:
  Model& model_;
  Optimizer& optimizer_;
  TrainerOptions options_;
  DynamicLossScaler scaler_;
  typename Model::Gradients grads_;
  ParameterGradients<T, MemorySpace> tensors_;
  GradNormWorkspace<Impl::state_t<T>, MemorySpace> norm_workspace_;
  long attempted_ = 0;
};

}  // namespace dilated::training

#endif  // DILATED_TRAINER_HPP
