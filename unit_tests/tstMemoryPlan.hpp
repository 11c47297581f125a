// The memory plan of a training step (LanguageModel::plan, training::plan_training_step) against
// what Kokkos' allocation hooks see in a real one, on every backend: a small model of each block
// kind and policy, with and without checkpointing, with AdamW and 8-bit AdamW. Kind by kind the
// plan must equal what the objects report holding (the model's memory(), the gradients, the
// optimizer's state); in all it must match the hooks' peak within 1 % (the issue asks 5 %; the
// plan lists every buffer, so only Kokkos's own bookkeeping may differ).
#include <DilatedAttentionTraining.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdint>
#include <map>
#include <random>
#include <string>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
namespace training = dilated::training;
using dilated::MemoryKind;

template <class Block>
struct Kind {
  using Model = dilated::LanguageModel<Block>;
};

// Bytes held in MemSpace by label, and the peak of their sum, from Kokkos' allocation hooks.
// Kokkos's own records ("Kokkos::..."; 0-byte team scratch on CUDA; "[unlabeled]": the OpenMP
// backend's per-thread team scratch in Kokkos 3.4, sized by the kernels' scratch requests) and
// the process-wide cuBLASLt workspace (made by whichever test ran a product first) are left out.
struct Hooks {
  static inline bool on = false;
  static inline std::int64_t current = 0, peak = 0;
  static inline std::map<std::string, std::int64_t> labels;
  static bool counted(const Kokkos::Tools::SpaceHandle& space, const char* label) {
    const std::string name(label);
    return on && std::string(space.name) == MemSpace::name() && !name.empty() &&
           name != "[unlabeled]" && name.rfind("Kokkos::", 0) != 0 &&
           name != "dilated::cublasLt::workspace";
  }
  static void allocate(Kokkos::Tools::SpaceHandle space, const char* label, const void*,
                       std::uint64_t size) {
    if (!counted(space, label)) return;
    current += static_cast<std::int64_t>(size);
    labels[label] += static_cast<std::int64_t>(size);
    if (current > peak) peak = current;
  }
  static void deallocate(Kokkos::Tools::SpaceHandle space, const char* label, const void*,
                         std::uint64_t size) {
    if (!counted(space, label)) return;
    current -= static_cast<std::int64_t>(size);
    labels[label] -= static_cast<std::int64_t>(size);
  }
  static void start() {
    current = peak = 0;
    labels.clear();
    Kokkos::Tools::Experimental::set_allocate_data_callback(&allocate);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(&deallocate);
    on = true;
  }
  static void stop() {
    on = false;
    Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(nullptr);
  }
  static std::string report() {
    std::string out = "held by label:\n";
    for (const auto& [label, bytes] : labels)
      if (bytes != 0) out += "  " + label + " " + std::to_string(bytes) + "\n";
    return out;
  }
};

std::string describe(const dilated::MemoryPlan& plan) {
  std::string out = "plan:\n";
  for (const auto& e : plan.entries())
    out += "  " + e.label + " (" + dilated::to_string(e.kind) + ") " + std::to_string(e.bytes) +
           " x" + std::to_string(e.count) + "\n";
  return out;
}

template <class Model, class Optimizer>
void check_plan(bool checkpointing) {
  using T = typename Model::value_type;
  CAPTURE(checkpointing);
  // Small, but with every buffer of the large runs: two branches, several loss chunks, a
  // vocabulary wider than the chunk, 8-bit blocks (tensors of >= 4096 values) and small tensors.
  const dilated::ModelShape shape{"plan-test", 2, 64, 4, 300};
  dilated::LanguageModelOptions options;
  options.segment_lengths = {32, 64};
  options.dilation_rates = {1, 2};
  options.checkpointing = checkpointing;
  options.loss_chunk_tokens = 96;
  const int batch = 2, length = 128;

  Hooks::start();
  {
    Model model(shape, options);
    Optimizer optimizer;
    training::Trainer<Model, Optimizer> trainer(model, optimizer, training::TrainerOptions());
    typename Model::Ids ids("dilated::training::token_ids", batch, length),
        targets("dilated::training::token_ids", batch, length);
    auto host = Kokkos::create_mirror_view(ids);
    std::mt19937 engine(7);
    for (int b = 0; b < batch; ++b)
      for (int t = 0; t < length; ++t)
        host(b, t) = static_cast<int>(engine() % shape.vocab);
    Kokkos::deep_copy(ids, host);
    Kokkos::deep_copy(targets, host);
    for (int step = 0; step < 2; ++step)
      trainer.step(ExecSpace(), ids, targets);
    ExecSpace().fence();
    Hooks::stop();

    const auto plan =
        training::plan_training_step<Model, Optimizer, ExecSpace>(shape, options, batch, length);
    INFO(describe(plan) << Hooks::report());
    // Kind by kind against what the objects hold (which count span x size, without Kokkos's
    // rounding of each allocation to 8 bytes: at most 7 bytes an entry apart).
    const auto near = [&](dilated::MemoryKind kind, std::size_t held, std::size_t extra = 0) {
      std::size_t entries = 0;
      for (const auto& e : plan.entries())
        if (e.kind == kind) entries += e.count;
      const std::size_t planned = plan.bytes(kind) - extra;
      CAPTURE(dilated::to_string(kind), planned, held, entries);
      CHECK(planned >= held);
      CHECK(planned - held <= 7 * entries);
    };
    // The CUDA Original's score workspaces (its tensor-core slots, stored matrices, cuBLAS
    // groups) are planned at their bound, AttentionOptions::workspace_bytes(), which long
    // sequences reach and this small problem does not: for those entries the bytes they hold
    // (the hooks') stand in for the bound. No host path plans at the bound.
    std::size_t bound_slack = 0;
    for (const auto& e : plan.entries())
      if (e.kind == MemoryKind::attention_workspace &&
          e.bytes == dilated::AttentionOptions().workspace_bytes())
        bound_slack += e.bytes * e.count - static_cast<std::size_t>(Hooks::labels[e.label]);
    const auto memory = model.memory();
    near(MemoryKind::weights, memory.parameters);
    near(MemoryKind::activations, memory.activations);
    near(MemoryKind::workspace, memory.workspace,
         training::Impl::plan_grad_norm<training::Impl::state_t<T>, MemSpace>(
             trainer.tensors().size())
             .bytes());
    near(MemoryKind::attention_workspace, memory.attention_workspace, bound_slack);
    // The token checks' 16-byte results are not in the layers' workspace_bytes().
    near(MemoryKind::loss_workspace, memory.loss_workspace, 2 * 2 * sizeof(long));
    std::size_t gradients = 0;
    for (const auto& t : trainer.tensors())
      gradients += t.gradient.extent(0) * sizeof(T);
    near(MemoryKind::gradients, gradients);
    const bool eight_bit = std::is_same_v<Optimizer, training::AdamW8bit<T, MemSpace>>;
    near(MemoryKind::optimizer_state,
         optimizer.state_bytes() - plan.bytes(MemoryKind::master_weights),
         eight_bit ? 2 * 256 * sizeof(float) : 0);  // the quantization maps
    // In all, against the hooks' peak.
    const double planned =
        static_cast<double>(plan.bytes() - plan.bytes(MemoryKind::library) - bound_slack);
    const double seen = static_cast<double>(Hooks::peak);
    CAPTURE(planned, seen);
    CHECK(std::abs(planned - seen) <= 0.01 * seen);
    // A step of another length after release_buffers() starts from the parameters alone.
    model.release_buffers();
    const auto released = model.memory();
    CHECK(released.activations == 0);
    CHECK(released.loss_workspace == 0);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("A training step's memory plan matches what Kokkos allocates",
                   "[memory][plan]" TEST_CATEGORY,
                   (Kind<dilated::StandardTransformerBlock<dilated::Improved, float, MemSpace>>),
                   (Kind<dilated::StandardTransformerBlock<dilated::Original, float, MemSpace>>),
                   (Kind<dilated::CustomTransformerBlock<dilated::Improved, float, MemSpace>>),
                   (Kind<dilated::CustomTransformerBlock<dilated::Original, float, MemSpace>>)) {
  using Model = typename TestType::Model;
  using T = typename Model::value_type;
  for (const bool checkpointing : {false, true}) {
    SECTION("AdamW") {
      check_plan<Model, training::AdamW<T, MemSpace>>(checkpointing);
    }
    SECTION("AdamW8bit") {
      check_plan<Model, training::AdamW8bit<T, MemSpace>>(checkpointing);
    }
  }
}

TEST_CASE("A memory plan's footprint rounds as the CUDA allocator does",
          "[memory][plan]" TEST_CATEGORY) {
  using dilated::MemoryPlan;
  // 128-byte header; 512-byte steps up to 1 MiB; 2 MiB pages above.
  CHECK(MemoryPlan::footprint_of(0, true) == 512);
  CHECK(MemoryPlan::footprint_of(384, true) == 512);
  CHECK(MemoryPlan::footprint_of(385, true) == 1024);
  CHECK(MemoryPlan::footprint_of((1 << 20) - 128, true) == (1 << 20));
  CHECK(MemoryPlan::footprint_of(1 << 20, true) == (2 << 20));
  CHECK(MemoryPlan::footprint_of((6 << 20) - 128, true) == (6 << 20));
  CHECK(MemoryPlan::footprint_of(12345, false) == 12345);
  MemoryPlan plan;
  plan.add("a", MemoryKind::weights, 1 << 20, 3).add("b", MemoryKind::activations, 100);
  CHECK(plan.bytes() == 3 * (1 << 20) + 104);  // 100 rounded to whole 8-byte words
  CHECK(plan.bytes(MemoryKind::weights) == 3 * (1 << 20));
  CHECK(plan.footprint(true) == 3 * (2 << 20) + 512);
  CHECK(plan.allocations() == 4);
}

TEST_CASE("A memory plan names a bad shape or length", "[memory][plan][errors]" TEST_CATEGORY) {
  using Model =
      dilated::LanguageModel<dilated::CustomTransformerBlock<dilated::Improved, float, MemSpace>>;
  using Catch::Matchers::ContainsSubstring;
  const dilated::ModelShape bad{"bad", 2, 30, 4, 10};
  CHECK_THROWS_WITH(Model::plan(bad, {}, 1, 8192), ContainsSubstring("num_heads"));
  const dilated::ModelShape good{"good", 1, 32, 4, 10};
  CHECK_THROWS_WITH(Model::plan(good, {}, 0, 8192), ContainsSubstring("batch = 0"));
}
