// dilated::training::AdamW8bit: AdamW (Dilated_AdamW.hpp, same update and hyperparameters) whose
// moments are stored in 8 bits, block-wise quantized as bitsandbytes' 8-bit optimizers do
// (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022): blocks of 2048
// values with one fp32 scale (absmax) each, exp_avg on the signed dynamic map and exp_avg_sq on the
// unsigned one (impl/Dilated_BlockQuantization.hpp). One kernel per tensor, a team per block,
// dequantizes the moments, updates them and the parameter, and requantizes them.
//
// State per value: 2 bytes of codes plus 8 bytes of scales per 2048 values, and for half/bf16
// storage 4 bytes of fp32 master weights. Tensors of fewer than min_8bit_size values (default
// 4096, bitsandbytes' default: biases, LayerNorm weights) keep fp32 moments and the exact AdamW
// update, where 8 bits would save little and cost accuracy.
//
// State files (save_state / load_state), bitsandbytes' names for the quantized tensors:
// <name>.state1.npy, <name>.state2.npy (the codes of exp_avg and exp_avg_sq, as float32 integers
// 0..255), <name>.absmax1.npy, <name>.absmax2.npy (the block scales, float32), and as AdamW's for
// the others: <name>.exp_avg.npy, <name>.exp_avg_sq.npy; <name>.step.npy and, for half/bf16,
// <name>.master.npy for every tensor.
#ifndef DILATED_ADAMW_8BIT_HPP
#define DILATED_ADAMW_8BIT_HPP

#include <Dilated_AdamW.hpp>
#include <Dilated_Compat.hpp>
#include <Dilated_ParameterGradients.hpp>
#include <impl/Dilated_AdamWKernels.hpp>
#include <impl/Dilated_BlockQuantization.hpp>
#include <impl/Dilated_OptimizerState.hpp>

#include <Kokkos_Core.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace dilated::training {

template <class T, class MemorySpace = Kokkos::DefaultExecutionSpace::memory_space>
class AdamW8bit {
  static_assert(Impl::is_storage_type_v<T>,
                "dilated::training::AdamW8bit<T, MemorySpace>: T must be float, double, "
                "Kokkos::Experimental::half_t or bhalf_t");
  static_assert(Kokkos::is_memory_space<MemorySpace>::value,
                "dilated::training::AdamW8bit<T, MemorySpace>: MemorySpace must be a Kokkos "
                "memory space");

 public:
  using value_type = T;
  using state_type = Impl::state_t<T>;  // the moments' arithmetic, master weights
  using memory_space = MemorySpace;
  using Tensors = ParameterGradients<T, MemorySpace>;
  static constexpr int block_size = Impl::quantization_block;

  // Throws std::invalid_argument naming the hyperparameter that is out of range. Allocates the
  // two quantization maps (2 KiB).
  explicit AdamW8bit(const AdamWOptions& options = {}, std::size_t min_8bit_size = 4096)
      : options_(options),
        min_8bit_size_(min_8bit_size),
        maps_(dilated::Impl::allocate_view<decltype(maps_)>(
            "dilated::training::AdamW8bit::quantization_maps", false, 2 * Impl::map_entries)) {
    dilated::Impl::ScopedRegion region("dilated::training::AdamW8bit::AdamW8bit");
    Impl::check_options("dilated::training::AdamW8bit", options_);
    auto host = Kokkos::create_mirror_view(maps_);
    const auto signed_map = Impl::dynamic_map(true), unsigned_map = Impl::dynamic_map(false);
    for (int i = 0; i < Impl::map_entries; ++i) {
      host(i) = signed_map[i];
      host(Impl::map_entries + i) = unsigned_map[i];
    }
    Kokkos::deep_copy(maps_, host);
  }

  const AdamWOptions& options() const { return options_; }
  void set_lr(double lr) {
    Impl::check_lr("dilated::training::AdamW8bit::set_lr", lr);
    options_.set_lr(lr);
  }
  long step_count() const { return step_count_; }
  std::size_t min_8bit_size() const { return min_8bit_size_; }
  // Whether tensor i's moments are quantized (after the first step or load_state).
  bool quantized(std::size_t i) const { return quantized_.at(i); }
  // The state the first step allocates for tensors of these sizes (values each), as allocate()
  // does: 8-bit moments with a scale per block for tensors of at least min_8bit_size values,
  // fp32 moments for smaller ones (MemoryKind::optimizer_state), and the fp32 master copy of
  // half / bf16 parameters (MemoryKind::master_weights); the quantization maps too.
  static MemoryPlan plan_state(const std::vector<std::size_t>& sizes,
                               std::size_t min_8bit_size = 4096) {
    const std::string label = "dilated::training::AdamW8bit";
    MemoryPlan plan;
    plan.add(label + "::quantization_maps", MemoryKind::optimizer_state,
             decltype(maps_)::required_allocation_size(2 * Impl::map_entries));
    std::vector<std::size_t> small;
    for (std::size_t n : sizes) {
      if (n >= min_8bit_size)
        Impl::QuantizedState<state_type, MemorySpace>::plan(plan, label, n,
                                                            Impl::needs_master_v<T>);
      else
        small.push_back(n);
    }
    plan.add(
        Impl::plan_moment_states<state_type, MemorySpace>(label, small, Impl::needs_master_v<T>));
    return plan;
  }
  std::size_t state_bytes() const {
    std::size_t total = 0;
    for (const auto& s : quantized_states_)
      total += s.bytes();
    for (const auto& s : moment_states_)
      total += s.bytes();
    return total;
  }

  // One 8-bit AdamW step over `tensors`; the same contract as AdamW::step.
  template <class ExecSpace>
  void step(const ExecSpace& space, const Tensors& tensors, double gradient_scale = 1.0) {
    constexpr const char* fn = "dilated::training::AdamW8bit::step";
    static_assert(dilated::Impl::is_execution_space_v<ExecSpace>,
                  "dilated::training::AdamW8bit::step: the first argument must be a Kokkos "
                  "execution space");
    static_assert(Kokkos::SpaceAccessibility<ExecSpace, MemorySpace>::accessible,
                  "dilated::training::AdamW8bit::step: the tensors' memory space must be "
                  "accessible from the execution space");
    dilated::Impl::ScopedRegion region(fn);
    dilated::Impl::require(std::isfinite(gradient_scale) && gradient_scale > 0, fn,
                           "gradient_scale = ", gradient_scale, " must be finite and > 0");
    const bool first = quantized_.empty();
    if (first) {
      Impl::check_tensor_list(fn, tensors);
      allocate(tensors);
    } else {
      Impl::check_same_tensors(fn, records_, tensors);
    }
    ++step_count_;
    const auto s = Impl::adamw_scalars<state_type>(
        options_.lr(), options_.beta1(), options_.beta2(), options_.eps(), options_.weight_decay(),
        step_count_, first, gradient_scale);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (quantized_[i]) {
        Impl::adamw8bit_tensor_step(space, "dilated::training::AdamW8bit::step", tensors[i],
                                    quantized_states_[i], maps_, s);
      } else {
        Impl::adamw_tensor_step(space, "dilated::training::AdamW8bit::step_fp32", tensors[i],
                                moment_states_[i], s);
      }
    }
  }
  void step(const Tensors& tensors, double gradient_scale = 1.0) {
    step(typename MemorySpace::execution_space(), tensors, gradient_scale);
  }

  // As AdamW::save_state, with the files named at the top of this header.
  template <class ExecSpace>
  void save_state(const ExecSpace& space, const std::string& directory) const {
    constexpr const char* fn = "dilated::training::AdamW8bit::save_state";
    dilated::Impl::ScopedRegion region(fn);
    dilated::Impl::require(!quantized_.empty(), fn, "no state to save before the first step");
    dilated::Impl::fence(space, fn);
    Impl::StateWriter writer(directory);
    const double step = static_cast<double>(step_count_);
    for (std::size_t i = 0; i < records_.size(); ++i) {
      const auto& r = records_[i];
      if (quantized_[i]) {
        const auto& q = quantized_states_[i];
        const std::vector<std::size_t> blocks{q.absmax1.extent(0)};
        writer.write(r.name + ".state1.npy", r.shape, Impl::host_values<float>(q.state1));
        writer.write(r.name + ".state2.npy", r.shape, Impl::host_values<float>(q.state2));
        writer.write(r.name + ".absmax1.npy", blocks, Impl::host_values<float>(q.absmax1));
        writer.write(r.name + ".absmax2.npy", blocks, Impl::host_values<float>(q.absmax2));
        if (q.master.extent(0) > 0) {
          writer.write(r.name + ".master.npy", r.shape, Impl::host_values<state_type>(q.master));
        }
      } else {
        Impl::write_moment_state(writer, r, moment_states_[i]);
      }
      writer.write(r.name + ".step.npy", {}, std::vector<double>{step});
    }
    writer.commit(fn);
  }

  // As AdamW::load_state. A tensor's files must be of the kind (8-bit or fp32) its size gives
  // under this optimizer's min_8bit_size.
  template <class ExecSpace>
  void load_state(const ExecSpace& space, const Tensors& tensors, const std::string& directory) {
    constexpr const char* fn = "dilated::training::AdamW8bit::load_state";
    dilated::Impl::ScopedRegion region(fn);
    Impl::check_tensor_list(fn, tensors);
    const auto records = Impl::record_tensors(tensors);
    const long step = Impl::read_step_count(fn, directory, records);
    constexpr bool master_weights = Impl::needs_master_v<T>;
    struct Files {
      std::vector<double> state1, state2, absmax1, absmax2;
      Impl::MomentFiles moments;
    };
    std::vector<Files> files(records.size());
    for (std::size_t i = 0; i < records.size(); ++i) {
      const auto& r = records[i];
      if (is_quantized(tensors[i])) {
        const std::vector<std::size_t> blocks{
            Impl::QuantizedState<state_type, MemorySpace>::blocks(tensors[i].parameter.extent(0))};
        using Impl::StateValues;
        files[i].state1 = Impl::read_state_file(fn, directory, r.name + ".state1.npy", r.shape,
                                                StateValues::codes);
        files[i].state2 = Impl::read_state_file(fn, directory, r.name + ".state2.npy", r.shape,
                                                StateValues::codes);
        files[i].absmax1 = Impl::read_state_file(fn, directory, r.name + ".absmax1.npy", blocks,
                                                 StateValues::non_negative);
        files[i].absmax2 = Impl::read_state_file(fn, directory, r.name + ".absmax2.npy", blocks,
                                                 StateValues::non_negative);
        if (master_weights) {
          files[i].moments.master =
              Impl::read_state_file(fn, directory, r.name + ".master.npy", r.shape);
        }
      } else {
        files[i].moments = Impl::read_moment_state(fn, directory, r, master_weights);
      }
    }
    dilated::Impl::fence(space, fn);  // no step in flight reads the state being replaced
    allocate(tensors);
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (quantized_[i]) {
        const auto& q = quantized_states_[i];
        Impl::copy_to_view(files[i].state1, q.state1);
        Impl::copy_to_view(files[i].state2, q.state2);
        Impl::copy_to_view(files[i].absmax1, q.absmax1);
        Impl::copy_to_view(files[i].absmax2, q.absmax2);
        if (master_weights) Impl::copy_to_view(files[i].moments.master, q.master);
      } else {
        Impl::copy_moment_state(files[i].moments, moment_states_[i]);
      }
    }
    step_count_ = step;
  }

 private:
  bool is_quantized(const ParameterGradient<T, MemorySpace>& t) const {
    return t.parameter.extent(0) >= min_8bit_size_;
  }

  // Fresh (uninitialised) state for `tensors`, replacing any held. The held state is released
  // first (the two need not coexist); a state that does not fit (DeviceOutOfMemory) leaves none,
  // so the next step starts afresh instead of finding a list with missing states.
  void allocate(const Tensors& tensors) {
    records_.clear();
    quantized_.clear();
    quantized_states_.clear();
    moment_states_.clear();
    std::vector<bool> quantized;
    std::vector<Impl::QuantizedState<state_type, MemorySpace>> quantized_states;
    std::vector<Impl::MomentState<state_type, MemorySpace>> moment_states;
    for (const auto& t : tensors) {
      const std::string label = "dilated::training::AdamW8bit::" + t.name;
      const std::size_t n = t.parameter.extent(0);
      const bool q = is_quantized(t);
      quantized.push_back(q);
      quantized_states.push_back(
          q ? Impl::QuantizedState<state_type, MemorySpace>(label, n, Impl::needs_master_v<T>)
            : Impl::QuantizedState<state_type, MemorySpace>());
      moment_states.push_back(
          q ? Impl::MomentState<state_type, MemorySpace>()
            : Impl::MomentState<state_type, MemorySpace>(label, n, Impl::needs_master_v<T>));
    }
    records_ = Impl::record_tensors(tensors);
    quantized_ = std::move(quantized);
    quantized_states_ = std::move(quantized_states);
    moment_states_ = std::move(moment_states);
  }

  AdamWOptions options_;
  std::size_t min_8bit_size_;
  Kokkos::View<float*, MemorySpace> maps_;  // the signed map, then the unsigned (512 values)
  long step_count_ = 0;
  std::vector<Impl::TensorRecord> records_;
  std::vector<bool> quantized_;
  std::vector<Impl::QuantizedState<state_type, MemorySpace>> quantized_states_;
  std::vector<Impl::MomentState<state_type, MemorySpace>> moment_states_;
};

}  // namespace dilated::training

#endif  // DILATED_ADAMW_8BIT_HPP
