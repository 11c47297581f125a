// The code snippets of docs/api.md, compiled and run: each lies between a comment line that
// opens with "[snippet:" and names it, and one that says "[snippet-end]", and appears verbatim
// (less its indentation) in docs/api.md, which
// the ctest dilated_docs_api_snippets checks (cmake/DilatedAttention_CheckSnippets.cmake).
// Exits non-zero when a result is wrong.
#include <DilatedAttention.hpp>
#include <DilatedAttentionTraining.hpp>

#include <cmath>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

template <class View>
void fill(const View& x, double phase) {
  auto host = Kokkos::create_mirror_view(x);
  for (std::size_t i = 0; i < host.size(); ++i)
    host.data()[i] = static_cast<typename View::value_type>(std::sin(0.37 * i + phase));
  Kokkos::deep_copy(x, host);
}

void attention_snippet() {
  const int batch = 1, n = 1000, heads = 4, head_dim = 16;
  // [snippet:attention]
  using View4 = Kokkos::View<float****, Kokkos::LayoutRight>;  // (batch, seq, heads, head_dim)
  View4 q("q", batch, n, heads, head_dim), k("k", batch, n, heads, head_dim),
      v("v", batch, n, heads, head_dim), out("out", batch, n, heads, head_dim);
  Kokkos::View<float***, Kokkos::LayoutRight> lse("lse", batch, n, heads);  // optional
  // ... fill q, k, v ...

  // The seed's DilatedAttention (Original) and ImprovedDilatedAttention (Improved): same
  // function, different algorithm. Segments 128/256/512 with dilations 1/2/4.
  const dilated::DilatedAttention<dilated::Improved> attention(
      {128, 256, 512}, {1, 2, 4},
      dilated::AttentionOptions().set_semantics(dilated::Semantics::grouped));
  const dilated::ForwardOptions call{/*is_causal=*/true, /*training=*/false, /*seed=*/0};
  attention.forward(Kokkos::DefaultExecutionSpace(), q, k, v, out, lse, call);

  // Gradients of <out, dout>; the forward's lse spares the backward a recomputation.
  View4 dout("dout", batch, n, heads, head_dim), dq("dq", batch, n, heads, head_dim),
      dk("dk", batch, n, heads, head_dim), dv("dv", batch, n, heads, head_dim);
  attention.backward(Kokkos::DefaultExecutionSpace(), q, k, v, out, lse, dout, dq, dk, dv, call);
  // [snippet-end]
  (void)q;
}

void attention_checked() {
  using View4 = Kokkos::View<float****, Kokkos::LayoutRight>;
  View4 q("q", 1, 200, 4, 8), k("k", 1, 200, 4, 8), v("v", 1, 200, 4, 8), out("out", 1, 200, 4, 8);
  fill(q, 0.1);
  fill(k, 0.2);
  fill(v, 0.3);
  const dilated::DilatedAttention<dilated::Original> attention({64, 128}, {1, 2});
  attention.forward(q, k, v, out);
  // [snippet:reference]
  // The oracle: exact dilated attention in double on the host (O(n^2) per head: small n only).
  Kokkos::View<double****, Kokkos::HostSpace> expected("expected", 1, 200, 4, 8);
  const auto q_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), q);
  const auto k_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), k);
  const auto v_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  dilated::reference(attention.geometry(/*num_heads=*/4), q_host, k_host, v_host, expected,
                     dilated::ReferenceOptions{/*is_causal=*/false, /*softmax_scale=*/{}});
  // [snippet-end]
  const auto got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out);
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got.data()[i] - expected.data()[i]));
  expect(worst < 1e-5, "DilatedAttention<Original> matches dilated::reference");
}

void geometry_snippet() {
  Kokkos::View<float****, Kokkos::HostSpace> v("v", 1, 16, 4, 8);
  // [snippet:geometry]
  // Which positions each head keeps: segments 4/8/16, dilations 1/2/4, 4 heads, LongNet.
  const dilated::Geometry g({4, 8, 16}, {1, 2, 4}, /*num_heads=*/4, dilated::Semantics::longnet);
  const bool kept = g.keeps(/*branch=*/1, /*head=*/2, /*position=*/5, /*n=*/16);  // offset 1: yes
  for (const dilated::HeadBlock& block : g.head_blocks()) {
    // block.branch, heads [block.head_begin, block.head_end), block.offset
    const dilated::KeptPositions p = g.kept(block.branch, /*segment=*/0, block.offset, 16);
    (void)p;  // positions p.first, p.first + p.stride, ... (p.count of them)
  }
  // Segment 1 of branch 1 for heads 2-3 as a strided view of v: no copy.
  const auto segment = dilated::segment_view(v, g, g.head_blocks()[2], /*segment=*/1);
  // segment(b, t, j, c) is v(b, 9 + 2 t, 2 + j, c); segment.extent(1) == 4
  // [snippet-end]
  expect(kept, "Geometry::keeps");
  expect(segment.extent(1) == 4 && segment.extent(2) == 2, "segment_view extents");
  expect(&segment(0, 1, 1, 3) == &v(0, 11, 3, 3), "segment_view aliases v");
}

void npy_snippet(const std::string& dir) {
  const std::string path = dir + "/x.npy";
  // [snippet:npy]
  // .npy files (numpy.save / numpy.load): float16/32/64 in, float32/64 out.
  const std::vector<float> values = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  dilated::npy::write(path, {2, 3}, values.data());
  const dilated::npy::Array array = dilated::npy::read(path);  // throws npy::FormatError
  // array.shape == {2, 3}, array.dtype == "<f4", array.to_double()[5] == 6.0
  // [snippet-end]
  expect(array.shape == std::vector<std::size_t>({2, 3}) && array.to_double()[5] == 6.0,
         "npy round trip");
}

void layer_snippet(const std::string& dir) {
  const int batch = 2, n = 300;
  // [snippet:layer]
  // The seed's MultiheadDilatedAttention (embed_dim 64, 4 heads) with the Improved algorithm
  // (ImprovedMultiheadDilatedAttention), float on the default device.
  using Layer = dilated::MultiheadDilatedAttention<dilated::Improved, float>;
  Layer layer(/*embed_dim=*/64, /*num_heads=*/4, /*segment_lengths=*/{64, 128, 256},
              /*dilation_rates=*/{1, 2, 4}, /*dropout=*/0.0, /*bias=*/true,
              /*layer_norm=*/true, /*layer_norm_eps=*/1e-5, /*gamma_init=*/1.0,
              dilated::Semantics::grouped, /*init_seed=*/42);
  Kokkos::View<float***, Kokkos::LayoutRight> x("x", batch, n, 64), y("y", batch, n, 64),
      dy("dy", batch, n, 64);
  // ... fill x and dy ...
  const dilated::ForwardOptions call{/*is_causal=*/true, /*training=*/false, /*seed=*/0};
  Layer::Activations saved;                                                 // what backward needs
  layer.forward(Kokkos::DefaultExecutionSpace(), x, x, x, y, saved, call);  // self-attention
  const Layer::Gradients grads = layer.backward(x, x, x, dy, saved, call);
  // grads.query: d<y, dy>/dx (self-attention: one input); grads.parameters: every weight's
  for (const auto& tensor : grads.parameters.named_tensors()) {
    // tensor.name ("q_proj.weight", ...), tensor.shape, tensor.values (a flat View)
    std::printf("%s: %zu values\n", tensor.name.c_str(), tensor.values.size());
  }
  layer.save(dir);  // q_proj.weight.npy, ..., out_proj.bias.npy (PyTorch state_dict names)
  layer.load(dir);
  // [snippet-end]
  expect(grads.self_attention && grads.query.extent(1) == std::size_t(n), "layer gradients");
}

void block_snippet() {
  const int batch = 1, n = 256;
  // [snippet:block]
  // The seed's two transformer blocks (pre-LN, GELU feed-forward 4E), here the Standard one
  // (MultiheadDilatedAttention inside); CustomTransformerBlock has the same calls.
  using Block = dilated::StandardTransformerBlock<dilated::Improved, float>;
  Block block(/*embed_dim=*/64, /*num_heads=*/4, {64, 128}, {1, 2}, dilated::Semantics::longnet);
  Kokkos::View<float***, Kokkos::LayoutRight> x("x", batch, n, 64), y("y", batch, n, 64),
      dy("dy", batch, n, 64);
  // ... fill x and dy ...
  const dilated::ForwardOptions call{/*is_causal=*/true, /*training=*/false, /*seed=*/0};
  Block::Activations saved;  // kept across steps with the Gradients: no reallocation
  Block::Gradients grads;
  block.forward(Kokkos::DefaultExecutionSpace(), x, y, saved, call);
  block.backward(Kokkos::DefaultExecutionSpace(), x, dy, /*dx=*/dy, saved, grads, call);
  // dy now holds d<y, dy>/dx; grads.parameters.named_tensors(): "norm1.weight", ...,
  // "attention.q_proj.weight", ..., "ffn.0.weight", ... Checkpointing: the forward recomputed
  // from x alone, block.backward(space, x, dy, dx, grads, call).
  // [snippet-end]
  expect(grads.parameters.named_tensors().size() == 18, "block gradients");
}

void training_snippet(const std::string& dir) {
  // [snippet:training]
  // A LongNet language model (2 Custom blocks of width 32, vocabulary 256) trained with AdamW.
  using Model = dilated::LanguageModel<dilated::CustomTransformerBlock<dilated::Improved, float>>;
  dilated::LanguageModelOptions options;
  options.segment_lengths = {64, 128};
  options.dilation_rates = {1, 2};
  options.checkpointing = true;  // keep each block's input, recompute the block in the backward
  Model model(dilated::ModelShape{"tiny", /*layers=*/2, /*embed_dim=*/32, /*heads=*/2, 256},
              options);  // or dilated::ModelShape::named("125M", 256)
  namespace training = dilated::training;
  training::AdamW<float> adamw(training::AdamWOptions().set_weight_decay(0.1));
  training::TrainerOptions trainer_options;  // clipping at 1.0, warm-up + cosine schedule
  trainer_options.schedule = training::WarmupCosineSchedule()
                                 .set_peak_lr(1e-3)
                                 .set_min_lr(1e-4)
                                 .set_warmup_steps(2)
                                 .set_total_steps(10);
  training::Trainer trainer(model, adamw, trainer_options);   // half: loss scaling on
  Model::Ids ids("ids", 1, 128), targets("targets", 1, 128);  // next-token targets
  // ... fill ids and targets (training::ByteCorpus::draw does it from a byte file) ...
  const training::StepResult r = trainer.step(Kokkos::DefaultExecutionSpace(), ids, targets);
  // r.loss, r.grad_norm, r.lr, r.taken (false: an overflowing step skipped)
  trainer.save(Kokkos::DefaultExecutionSpace(), dir + "/checkpoint");  // replaced whole
  trainer.load(Kokkos::DefaultExecutionSpace(), dir + "/checkpoint");  // resumes bitwise
  // [snippet-end]
  expect(r.taken && std::isfinite(r.loss) && trainer.steps_taken() == 1, "training step");
}

void memory_plan_snippet() {
  using Model = dilated::LanguageModel<dilated::CustomTransformerBlock<dilated::Improved, float>>;
  dilated::LanguageModelOptions options;
  options.segment_lengths = {64, 128};
  options.dilation_rates = {1, 2};
  options.checkpointing = true;
  const dilated::ModelShape shape{"tiny", 2, 32, 2, 256};
  // [snippet:memory-plan]
  // A training step's device memory, listed before anything is allocated (no Kokkos needed).
  namespace training = dilated::training;
  const dilated::MemoryPlan plan =
      training::plan_training_step<Model, training::AdamW8bit<float>>(shape, options,
                                                                      /*batch=*/1, 4096);
  const std::size_t activations = plan.bytes(dilated::MemoryKind::activations);
  const std::size_t on_a_gpu = plan.footprint(/*device_pages=*/true);  // the allocator's rounding
  std::size_t largest = 0;  // each entry: e.label (its Kokkos label), e.kind, e.bytes, e.count
  for (const auto& e : plan.entries())
    largest = std::max(largest, e.bytes);
  // [snippet-end]
  // The plan holds what a real step allocates: the model's activations after one.
  Model model(shape, options);
  training::AdamW8bit<float> optimizer;
  training::Trainer trainer(model, optimizer, training::TrainerOptions());
  Model::Ids ids("ids", 1, 4096), targets("targets", 1, 4096);
  trainer.step(Kokkos::DefaultExecutionSpace(), ids, targets);
  expect(model.memory().activations <= activations &&
             activations - model.memory().activations < 64 && on_a_gpu >= plan.bytes(),
         "memory plan");
}

void seed_names_snippet() {
  // [snippet:seed-names]
  // The seed's four class names.
  const dilated::seed::DilatedAttention a({2048, 4096}, {1, 2});
  const dilated::seed::ImprovedDilatedAttention b({2048, 4096}, {1, 2});
  const dilated::seed::MultiheadDilatedAttention<float> c(768, 12, {2048, 4096}, {1, 2});
  const dilated::seed::ImprovedMultiheadDilatedAttention<> d(768, 12, {2048, 4096}, {1, 2});
  // [snippet-end]
  expect(c.head_dim() == 64 && d.num_heads() == 12 && a.dilation_rates().size() == 2 &&
             b.segment_lengths()[1] == 4096,
         "seed names");
}

void options_snippet() {
  // [snippet:options]
  const auto options = dilated::AttentionOptions()
                           .set_semantics(dilated::semantics_from_string("longnet"))
                           .set_softmax_scale(0.125)          // default 1/sqrt(head_dim)
                           .set_attention_dropout(0.1)        // applied when call.training
                           .set_detach_branch_weights(false)  // longnet: gradients flow (default)
                           .set_workspace_bytes(256 << 20)    // Original's score workspace
                           .set_original_tensor_cores(true)   // Original on CUDA, half/bf16
                           .set_vendor_gemm(true);            // else on CUDA: cuBLAS products
  const dilated::DilatedAttention<dilated::Original> attention({2048, 4096}, {1, 2}, options);
  // Bad arguments throw std::invalid_argument naming the function, argument and value.
  try {
    const dilated::DilatedAttention<> bad({2048, 4096}, {1, 0});
  } catch (const std::invalid_argument& e) {
    // e.what(): "dilated::DilatedAttention: dilation_rates[1] = 0 must be >= 1"
  }
  // [snippet-end]
  expect(attention.options().semantics() == dilated::Semantics::longnet, "options");
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const std::string dir =
      (std::filesystem::temp_directory_path() / "dilated_api_snippets").string();
  std::filesystem::create_directories(dir);
  attention_snippet();
  attention_checked();
  geometry_snippet();
  npy_snippet(dir);
  layer_snippet(dir);
  block_snippet();
  training_snippet(dir);
  memory_plan_snippet();
  seed_names_snippet();
  options_snippet();
  std::printf("%s\n", failures ? "FAIL" : "all snippets ran");
  return failures ? 1 : 0;
}
