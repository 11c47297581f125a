// The language model over the seed's blocks and its training (LanguageModel, Trainer, AdamW,
// AdamW8bit, DynamicLossScaler, checkpoints) on every backend: gradients of a 2-block model of
// either block kind and policy against central finite differences (double) for every tensor,
// activation checkpointing on and off, a loss that falls over 50 steps, save / load / step equal
// to not stopping (bitwise in double), an overflowing step skipped with the scale lowered, no
// allocation in the steady state, and the errors for bad arguments.
#include <DilatedAttentionTraining.hpp>
#include <Dilated_ScratchDirectory.hpp>
#include <Dilated_Allclose.hpp>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using ExecSpace = TEST_EXECSPACE;
using MemSpace = TEST_MEMSPACE;
using dilated::Semantics;
namespace training = dilated::training;

template <class Policy>
struct Standard {
  template <class T>
  using Model = dilated::LanguageModel<dilated::StandardTransformerBlock<Policy, T, MemSpace>>;
};
template <class Policy>
struct Custom {
  template <class T>
  using Model = dilated::LanguageModel<dilated::CustomTransformerBlock<Policy, T, MemSpace>>;
};

using Ids = Kokkos::View<int**, Kokkos::LayoutRight, MemSpace>;

const dilated::ModelShape tiny{"tiny", 2, 8, 2, 11};

dilated::LanguageModelOptions tiny_options(bool checkpointing = false) {
  dilated::LanguageModelOptions o;
  o.segment_lengths = {4, 8};
  o.dilation_rates = {1, 2};
  o.semantics = Semantics::longnet;
  o.checkpointing = checkpointing;
  o.loss_chunk_tokens = 5;  // several chunks, the last one short
  o.init_seed = 3;
  return o;
}

// Random ids in [0, vocab) and their next-token targets (a shifted window of one sequence).
std::pair<Ids, Ids> random_batch(int b, int n, int vocab, std::uint64_t seed) {
  Ids ids("ids", b, n), targets("targets", b, n);
  auto hi = Kokkos::create_mirror_view(ids);
  auto ht = Kokkos::create_mirror_view(targets);
  std::mt19937_64 engine(seed);
  for (int i = 0; i < b; ++i) {
    std::vector<int> window(n + 1);
    for (auto& w : window)
      w = static_cast<int>(engine() % vocab);
    for (int t = 0; t < n; ++t) {
      hi(i, t) = window[t];
      ht(i, t) = window[t + 1];
    }
  }
  Kokkos::deep_copy(ids, hi);
  Kokkos::deep_copy(targets, ht);
  return {ids, targets};
}

template <class Tensor>
std::vector<double> host_values(const Tensor& t) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), t.values);
  std::vector<double> out(host.extent(0));
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = dilated::Impl::to_double(host(i));
  return out;
}

template <class T, class View>
void set_value(const View& values, std::size_t i, double value) {
  const T v = static_cast<T>(value);
  Kokkos::deep_copy(Kokkos::subview(values, i), v);
}

}  // namespace

TEMPLATE_TEST_CASE("Language model gradients equal finite differences (double)",
                   "[model][backward]" TEST_CATEGORY, Standard<dilated::Original>,
                   Standard<dilated::Improved>, Custom<dilated::Original>,
                   Custom<dilated::Improved>) {
  using Model = typename TestType::template Model<double>;
  Model model(tiny, tiny_options());
  // Move the LayerNorms and biases off (1, 0) so that no gradient path can hide behind them.
  int index = 0;
  for (const auto& t : model.named_tensors()) {
    auto v = host_values(t);
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] += 0.05 * std::sin(1.3 * i + index);
    auto host = Kokkos::create_mirror_view(t.values);
    for (std::size_t i = 0; i < v.size(); ++i)
      host(i) = v[i];
    Kokkos::deep_copy(t.values, host);
    ++index;
  }
  const auto [ids, targets] = random_batch(2, 8, tiny.vocab, 11);
  typename Model::Gradients grads;
  const double loss = model.forward_backward(ExecSpace(), ids, targets, grads);
  Kokkos::fence();
  CHECK(std::isfinite(loss));
  const auto parameters = model.named_tensors();
  const auto gradients = model.named_tensors(grads);
  REQUIRE(parameters.size() == gradients.size());
  REQUIRE(parameters.size() == 1 + 2 * (Model::standard ? 18 : 16) + 2);
  // Central differences err by eps^2 f''' / 6: 1e-5 left 5e-8 on a tied-embedding
  // coordinate; 2e-6 leaves 2e-9 of truncation and ~1e-10 of rounding (1e-16 / eps).
  const double eps = 2e-6;
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    CAPTURE(parameters[k].name);
    const auto p = host_values(parameters[k]);
    const auto g = host_values(gradients[k]);
    // Four coordinates of every tensor (all of the short ones), spread over it.
    const std::size_t count = std::min<std::size_t>(4, p.size());
    Kokkos::View<double*, Kokkos::HostSpace> fd("fd", count), analytic("analytic", count);
    for (std::size_t c = 0; c < count; ++c) {
      const std::size_t i = (c * 7919 + k) % p.size();
      set_value<double>(parameters[k].values, i, p[i] + eps);
      const double up = model.loss(ExecSpace(), ids, targets);
      set_value<double>(parameters[k].values, i, p[i] - eps);
      const double down = model.loss(ExecSpace(), ids, targets);
      set_value<double>(parameters[k].values, i, p[i]);
      fd(c) = (up - down) / (2 * eps);
      analytic(c) = g[i];
    }
    DILATED_CHECK_ALLCLOSE(analytic, fd, 1e-6, 1e-9);
  }
  // Activation checkpointing gives the same gradients (the same kernels on the same values).
  Model checkpointed(tiny, tiny_options(true));
  const auto source = model.named_tensors();
  const auto target = checkpointed.named_tensors();
  for (std::size_t k = 0; k < source.size(); ++k)
    Kokkos::deep_copy(target[k].values, source[k].values);
  typename Model::Gradients again;
  const double loss_again = checkpointed.forward_backward(ExecSpace(), ids, targets, again);
  Kokkos::fence();
  CHECK(loss_again == loss);
  const auto gradients_again = checkpointed.named_tensors(again);
  for (std::size_t k = 0; k < gradients.size(); ++k) {
    CAPTURE(gradients[k].name);
    const auto a = host_values(gradients[k]);
    const auto b = host_values(gradients_again[k]);
    Kokkos::View<const double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> va(
        a.data(), a.size()),
        vb(b.data(), b.size());
    DILATED_CHECK_ALLCLOSE(vb, va, 1e-12, 1e-12);
  }
  CHECK(checkpointed.memory().activations < model.memory().activations);
}

namespace {

// 50 steps of AdamW on one fixed sequence of 16 tokens (warm-up 5, cosine from 1e-2): the model
// memorises it. In half the loss scaler is on (2^16), in bf16 and float off.
template <class TestType, class T, class Optimizer>
void check_loss_falls() {
  using Model = typename TestType::template Model<T>;
  Model model({"tiny", 2, 16, 2, 13}, tiny_options());
  Optimizer optimizer(training::AdamWOptions().set_weight_decay(0.0));
  training::TrainerOptions options;
  options.schedule = training::WarmupCosineSchedule()
                         .set_peak_lr(1e-2)
                         .set_min_lr(1e-3)
                         .set_warmup_steps(5)
                         .set_total_steps(50);
  training::Trainer trainer(model, optimizer, options);
  const auto [ids, targets] = random_batch(1, 16, 13, 21);
  double first = 0, last = 0;
  long skipped = 0;
  for (int s = 0; s < 50; ++s) {
    const auto r = trainer.step(ExecSpace(), ids, targets);
    skipped += r.taken ? 0 : 1;
    if (s == 0) first = r.loss;
    last = r.loss;
  }
  CAPTURE(first, last, skipped);
  CHECK(skipped <= 2);        // a half step may overflow at the first scales
  CHECK(first > 2.0);         // about log(13) = 2.56 at the start
  CHECK(last < 0.5 * first);  // memorising 16 tokens
}

}  // namespace

TEMPLATE_TEST_CASE("Language model: the loss falls over 50 AdamW steps on a fixed sequence",
                   "[model][training]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Original>) {
  SECTION("float, AdamW") {
    check_loss_falls<TestType, float, training::AdamW<float, MemSpace>>();
  }
  SECTION("half, AdamW8bit (loss scaling)") {
    using Half = Kokkos::Experimental::half_t;
    check_loss_falls<TestType, Half, training::AdamW8bit<Half, MemSpace>>();
  }
#if DILATED_HAVE_BHALF
  SECTION("bf16, AdamW") {
    using Bf16 = Kokkos::Experimental::bhalf_t;
    check_loss_falls<TestType, Bf16, training::AdamW<Bf16, MemSpace>>();
  }
#endif
}

TEMPLATE_TEST_CASE("Trainer: save, load and step equals stepping without stopping (bitwise)",
                   "[model][checkpoint]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Improved>) {
  using Model = typename TestType::template Model<double>;
  const auto dir = dilated::testing::scratch_directory("resume_" + std::to_string(Model::standard));
  const auto [ids, targets] = random_batch(1, 8, tiny.vocab, 31);
  training::TrainerOptions options;
  options.schedule = training::WarmupCosineSchedule()
                         .set_peak_lr(3e-3)
                         .set_min_lr(3e-4)
                         .set_warmup_steps(2)
                         .set_total_steps(10);
  // Run A: 3 steps, save, 1 more.
  Model a(tiny, tiny_options());
  training::AdamW8bit<double, MemSpace> opt_a;
  training::Trainer ta(a, opt_a, options);
  for (int s = 0; s < 3; ++s)
    ta.step(ExecSpace(), ids, targets);
  ta.save(ExecSpace(), dir.string(), {42.0});
  const auto ra = ta.step(ExecSpace(), ids, targets);
  // Run B: another initialisation, loaded from the checkpoint, 1 step.
  auto options_b = tiny_options();
  options_b.init_seed = 99;
  Model b(tiny, options_b);
  training::AdamW8bit<double, MemSpace> opt_b;
  training::Trainer tb(b, opt_b, options);
  const auto extra = tb.load(ExecSpace(), dir.string(), 1);
  REQUIRE(extra.size() == 1);
  CHECK(extra[0] == 42.0);
  CHECK(tb.steps_attempted() == 3);
  const auto rb = tb.step(ExecSpace(), ids, targets);
  CHECK(rb.loss == ra.loss);
  CHECK(rb.lr == ra.lr);
  const auto pa = a.named_tensors(), pb = b.named_tensors();
  for (std::size_t k = 0; k < pa.size(); ++k) {
    CAPTURE(pa[k].name);
    CHECK(host_values(pa[k]) == host_values(pb[k]));
  }
  // A checkpoint of another shape is refused, naming the file, and changes nothing.
  Model other({"tiny", 2, 12, 2, 11}, tiny_options());
  training::AdamW<double, MemSpace> opt_other;
  training::Trainer to(other, opt_other, options);
  const auto before = host_values(other.named_tensors()[0]);
  CHECK_THROWS_WITH(to.load(ExecSpace(), dir.string(), 1),
                    Catch::Matchers::ContainsSubstring("embedding.weight.npy has shape (11, 8)"));
  CHECK(host_values(other.named_tensors()[0]) == before);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Trainer: a step whose scaled gradients overflow is skipped and the scale lowered",
          "[model][loss_scale]" TEST_CATEGORY) {
  using Half = Kokkos::Experimental::half_t;
  using Model =
      dilated::LanguageModel<dilated::StandardTransformerBlock<dilated::Improved, Half, MemSpace>>;
  Model model(tiny, tiny_options());
  training::AdamW<Half, MemSpace> adamw;
  training::TrainerOptions options;
  options.schedule = training::WarmupCosineSchedule()
                         .set_peak_lr(1e-3)
                         .set_min_lr(1e-4)
                         .set_warmup_steps(1)
                         .set_total_steps(10);
  // A scale beyond the storage type's range squared: the scaled gradients cannot be finite
  // (half's 65504^2 on a GPU; on a host build half is float, 3.4e38^2).
  const double max = static_cast<double>(std::numeric_limits<float>::max());
  const double huge = DILATED_HALF_IS_FLOAT ? max : 65504.0;  // half's largest finite value
  const double init = std::min(1e300, std::max(huge * huge, max * 4));
  training::Trainer trainer(model, adamw, options,
                            training::DynamicLossScaler(true, init, 2.0, 0.5, 2000));
  const auto [ids, targets] = random_batch(1, 8, tiny.vocab, 41);
  const auto before = host_values(model.named_tensors()[0]);
  // On the host the overflow's inf - inf raises FE_INVALID, which the test main traps (to catch
  // unintended NaNs): held around the step, which runs in this thread (Serial for an OpenMP
  // build: its worker threads carry the trap too).
#if defined(KOKKOS_ENABLE_OPENMP) && defined(KOKKOS_ENABLE_SERIAL)
  using StepSpace =
      std::conditional_t<std::is_same_v<ExecSpace, Kokkos::OpenMP>, Kokkos::Serial, ExecSpace>;
#else
  using StepSpace = ExecSpace;
#endif
  std::fenv_t environment;
  std::feholdexcept(&environment);
  const auto r = trainer.step(StepSpace(), ids, targets);
  std::feclearexcept(FE_ALL_EXCEPT);
  std::fesetenv(&environment);
  CHECK_FALSE(r.taken);
  CHECK(std::isfinite(r.loss));  // the forward is unscaled
  CHECK_FALSE(std::isfinite(r.grad_norm));
  CHECK(trainer.scaler().scale() == init * 0.5);
  CHECK(trainer.scaler().skipped_steps() == 1);
  CHECK(trainer.steps_taken() == 0);
  CHECK(host_values(model.named_tensors()[0]) == before);
  // With a scale the gradients fit, the step is taken.
  training::Trainer fits(model, adamw, options, training::DynamicLossScaler(true, 1024.0));
  const auto ok = fits.step(ExecSpace(), ids, targets);
  CHECK(ok.taken);
  CHECK(std::isfinite(ok.grad_norm));
  CHECK(host_values(model.named_tensors()[0]) != before);
}

TEST_CASE("Language model rejects bad arguments, naming them", "[model][errors]" TEST_CATEGORY) {
  using Catch::Matchers::ContainsSubstring;
  using Model =
      dilated::LanguageModel<dilated::CustomTransformerBlock<dilated::Improved, float, MemSpace>>;
  CHECK_THROWS_WITH(dilated::ModelShape::named("huge"), ContainsSubstring("name = 'huge'"));
  CHECK(dilated::ModelShape::named("125M").parameter_count(false) == 123653376LL);
  CHECK_THROWS_WITH(Model({"x", 0, 8, 2, 11}), ContainsSubstring("layers = 0"));
  CHECK_THROWS_WITH(Model({"x", 1, 8, 3, 11}), ContainsSubstring("num_heads = 3"));
  Model model(tiny, tiny_options());
  typename Model::Gradients grads;
  const auto [ids, targets] = random_batch(1, 12, tiny.vocab, 5);
  CHECK_THROWS_WITH(model.forward_backward(ExecSpace(), ids, targets, grads),
                    ContainsSubstring("sequence_length = 12"));
  auto [good, good_targets] = random_batch(1, 8, tiny.vocab, 6);
  Kokkos::deep_copy(Kokkos::subview(good, 0, 3), 11);
  CHECK_THROWS_WITH(model.forward_backward(ExecSpace(), good, good_targets, grads),
                    ContainsSubstring("ids"));
  CHECK_THROWS_WITH(model.forward_backward(ExecSpace(), good_targets, good_targets, grads, 0.0),
                    ContainsSubstring("loss_scale = 0"));
}

namespace {
struct AllocationCount {
  static inline long count = 0;
  static inline bool counting = false;
  static inline std::map<std::string, long> labels;  // what was allocated, for the report
  static void on_allocate(Kokkos::Tools::SpaceHandle space, const char* label, const void*,
                          std::uint64_t size) {
    // Zero-byte allocations hold no memory: Kokkos 4.6 on CUDA records one per team-policy
    // launch ("Kokkos::CudaSpace::TeamScratchMemory", 0 B; 112 per step of this test on the
    // H200), which are Kokkos's bookkeeping, not buffers of the library.
    if (!counting || size == 0) return;
    ++count;
    ++labels[std::string(space.name) + ":" + label + " (" + std::to_string(size) + " B)"];
  }
  static std::string report() {
    std::string out;
    for (const auto& [label, times] : labels)
      out += label + " x" + std::to_string(times) + "\n";
    return out;
  }
};
}  // namespace

TEMPLATE_TEST_CASE("Language model steps after the first allocate nothing",
                   "[model][memory]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Original>) {
  using Model = typename TestType::template Model<float>;
  for (const bool checkpointing : {false, true}) {
    CAPTURE(checkpointing);
    Model model(tiny, tiny_options(checkpointing));
    typename Model::Gradients grads;
    const auto [ids, targets] = random_batch(2, 8, tiny.vocab, 51);
    model.forward_backward(ExecSpace(), ids, targets, grads);
    model.loss(ExecSpace(), ids, targets);
    ExecSpace().fence();
    const auto memory = model.memory();
    Kokkos::Tools::Experimental::set_allocate_data_callback(&AllocationCount::on_allocate);
    AllocationCount::count = 0;
    AllocationCount::labels.clear();
    AllocationCount::counting = true;
    for (int step = 0; step < 2; ++step) {
      model.forward_backward(ExecSpace(), ids, targets, grads);
      model.loss(ExecSpace(), ids, targets);
    }
    ExecSpace().fence();
    AllocationCount::counting = false;
    Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
    INFO(AllocationCount::report());
    CHECK(AllocationCount::count == 0);
    const auto after = model.memory();
    CHECK(after.activations == memory.activations);
    CHECK(after.workspace == memory.workspace);
    CHECK(after.parameters == memory.parameters);
  }
}

TEST_CASE("A model that does not fit reports the allocation: label and bytes",
          "[model][memory][errors]" TEST_CATEGORY) {
  using Model =
      dilated::LanguageModel<dilated::CustomTransformerBlock<dilated::Improved, float, MemSpace>>;
  // 2^26 x 2^24 floats (4 PiB) for the embedding: beyond any device's and any address space.
  const dilated::ModelShape huge{"huge", 1, 1 << 24, 1, 1 << 26};
  try {
    Model model(huge, tiny_options());
    FAIL("a 4 PiB embedding was allocated");
  } catch (const dilated::DeviceOutOfMemory& e) {
    CHECK(e.label() == "dilated::LanguageModel::embedding");
    CHECK(e.bytes() == (std::size_t(1) << 50) * sizeof(float));
    CHECK(e.memory_space() == MemSpace::name());
    CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring(
                                          "allocating 'dilated::LanguageModel::embedding'"));
  }
}

TEMPLATE_TEST_CASE("A model's initial parameters do not depend on the threads that draw them",
                   "[model][init]" TEST_CATEGORY, Standard<dilated::Improved>,
                   Custom<dilated::Original>) {
  using Model = typename TestType::template Model<double>;
  using Block = typename Model::block_type;
  // More blocks than a 2-core machine's threads: several batches of drawing and copying.
  const dilated::ModelShape shape{"deep", 5, 8, 2, 11};
  auto options = tiny_options();
  options.init_seed = 17;
  Model model(shape, options);
  // The embedding: 0.02 N(0, 1) from one generator seeded with the model's seed.
  dilated::Impl::NormalGenerator normal(17);
  const auto embedding = host_values(model.named_tensors().front());
  std::vector<double> expected(embedding.size());
  for (auto& x : expected)
    x = 0.02 * normal();
  CHECK(embedding == expected);
  // Block l: what the block alone draws from seed + 1 + 2 l.
  const auto all = model.named_tensors();
  for (int l = 0; l < shape.layers; ++l) {
    CAPTURE(l);
    const Block alone(shape.embed_dim, shape.num_heads, options.segment_lengths,
                      options.dilation_rates, options.semantics, 17 + 1 + 2 * l);
    const auto prefix = "blocks." + std::to_string(l) + ".";
    for (const auto& t : alone.parameters().named_tensors()) {
      CAPTURE(t.name);
      const auto it = std::find_if(all.begin(), all.end(),
                                   [&](const auto& m) { return m.name == prefix + t.name; });
      REQUIRE(it != all.end());
      CHECK(host_values(*it) == host_values(t));
    }
  }
}
