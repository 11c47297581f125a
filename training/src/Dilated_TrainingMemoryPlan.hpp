// dilated::training::plan_training_step: the device memory of one training step of a
// LanguageModel with an optimizer (Trainer::step), listed before anything is allocated
// (Dilated_MemoryPlan.hpp): the model's plan (weights, gradients, activations, workspaces), the
// optimizer's state and master weights, grad_norm's partial sums, the caller's token ids and
// targets, and on CUDA the cuBLASLt workspace. Everything in it stays allocated from the first
// step on, so its sum is the step's peak as Kokkos' allocation hooks see it; footprint(true)
// adds the CUDA allocator's rounding. Not in it: the CUDA context, cuBLAS's own handles and
// Kokkos's internal buffers, which the capacity tool measures on the device.
#ifndef DILATED_TRAINING_MEMORY_PLAN_HPP
#define DILATED_TRAINING_MEMORY_PLAN_HPP

#include <Dilated_GradientClipping.hpp>
#include <Dilated_LanguageModel.hpp>
#include <Dilated_MemoryPlan.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <vector>

#if defined(KOKKOS_ENABLE_CUDA)
#include <impl/Dilated_CublasLtGemm.hpp>
#endif

namespace dilated::training {

namespace Impl {

// grad_norm's workspace for `tensors` gradients (GradNormWorkspace, as grad_norm sizes it).
template <class Acc, class MemorySpace>
MemoryPlan plan_grad_norm(std::size_t tensors) {
  using Workspace = GradNormWorkspace<Acc, MemorySpace>;
  const auto kind = MemoryKind::workspace;
  MemoryPlan plan;
  plan.add("dilated::training::grad_norm::partials", kind,
           decltype(Workspace::partials)::required_allocation_size(tensors,
                                                                   Workspace::partials_per_tensor));
  plan.add("dilated::training::grad_norm::sums", kind,
           decltype(Workspace::sums)::required_allocation_size(tensors));
  plan.add("dilated::training::grad_norm::total", kind, sizeof(Acc));
  plan.add("dilated::training::grad_norm::data", kind,
           decltype(Workspace::data)::required_allocation_size(tensors));
  plan.add("dilated::training::grad_norm::sizes", kind,
           decltype(Workspace::sizes)::required_allocation_size(tensors));
  return plan;
}

}  // namespace Impl

// One Trainer step of Model (a LanguageModel) with an Optimizer (AdamW, or AdamW8bit with its
// default min_8bit_size) on (batch, length) token ids, run on ExecSpace (the memory space's
// default unless given: LanguageModel::plan). Needs no Kokkos::initialize (it allocates
// nothing). Throws what LanguageModel::plan throws (a bad shape or length).
template <class Model, class Optimizer,
          class ExecSpace = typename Model::memory_space::execution_space>
MemoryPlan plan_training_step(const ModelShape& shape, const LanguageModelOptions& options,
                              int batch, long length) {
  using T = typename Model::value_type;
  using MemorySpace = typename Model::memory_space;
  MemoryPlan plan = Model::template plan<ExecSpace>(shape, options, batch, length);
  const std::vector<std::size_t> sizes = Model::parameter_sizes(shape);
  plan.add(Optimizer::plan_state(sizes));
  plan.add(Impl::plan_grad_norm<Impl::state_t<T>, MemorySpace>(sizes.size()));
  plan.add("dilated::training::token_ids", MemoryKind::inputs,
           Model::Ids::required_allocation_size(batch, length), 2);
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<MemorySpace, Kokkos::CudaSpace>)
    plan.add("dilated::cublasLt::workspace", MemoryKind::library,
             dilated::Impl::CublasLtPlans::workspace_bytes + 256);
#endif
  return plan;
}

}  // namespace dilated::training

#endif  // DILATED_TRAINING_MEMORY_PLAN_HPP
