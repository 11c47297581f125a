// dilated_train: trains a LongNet language model (dilated::LanguageModel over the seed's
// StandardTransformerBlock or CustomTransformerBlock) on a byte corpus (scripts/prepare_corpus.sh)
// on the default Kokkos device, and logs what a user watches: per step the loss, tokens/s and
// peak device memory (and in the log, per step, the memory split: weights, gradients, optimizer
// state, saved activations, workspace); every --eval-every steps the held-out loss; at the end
// the memory split, the step time and the model FLOP utilisation. --log writes all of it as
// JSON (rewritten whole after every evaluation, through a temporary); scripts/plot_training.py
// draws the curves.
//
//   dilated_train --data build/corpus --model small --block standard --policy improved
//                 --dtype half --length 65536 --steps 300 --log run.json
//
// Exits non-zero with a message naming the argument on bad input (an unknown model, a length the
// segments cannot take, a missing corpus, a checkpoint of another shape).
#include <DilatedAttentionTraining.hpp>
#include <Dilated_MemoryTracker.hpp>

#include <CLI/CLI.hpp>

#if defined(KOKKOS_ENABLE_OPENMP)
#include <omp.h>

#include <ctime>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace training = dilated::training;
using Space = Kokkos::DefaultExecutionSpace;
using Memory = Space::memory_space;

struct Config {
  std::string data = "build/corpus", model = "small", block = "standard", policy = "improved";
  std::string dtype = "half", optimizer = "adamw", semantics = "grouped", gelu = "none", log, save,
              resume;
  int layers = 0, embed = 0, heads = 0, vocab = 256, batch = 1;
  long length = 65536, steps = 300, warmup = 30, eval_every = 50, eval_batches = 2, save_every = 0,
       chunk = 4096;
  std::vector<int> segments{2048, 4096, 8192, 16384}, dilations{1, 2, 4, 8};
  double lr = 6e-4, min_lr = 6e-5, weight_decay = 0.1, max_norm = 1.0, peak_tflops = 989.4;
  bool checkpointing = false;
  long profile_steps = 0;
  std::uint64_t seed = 1;
};

// --profile: the library's profiling regions and kernels timed over extra steps, each region fenced
// at its start and end (Kokkos Tools region callbacks), so that a region's time is its work; nested
// regions count in their parents too. The fences serialise the step: the profiled steps are
// slower than the others, and their total is printed beside the region times.
struct RegionTimer {
  struct Open {
    std::string name;
    std::chrono::steady_clock::time_point start;
  };
  static inline std::vector<Open> stack;
  static inline std::map<std::string, std::pair<double, long>> totals;  // seconds, calls
  static void push(const char* name) {
    Kokkos::fence();
    stack.push_back({name, std::chrono::steady_clock::now()});
  }
  static void pop() {
    Kokkos::fence();
    const auto& top = stack.back();
    auto& t = totals[top.name];
    t.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - top.start).count();
    ++t.second;
    stack.pop_back();
  }
};

// The kernels inside the profiled steps, by label: each parallel_for / reduce / scan and
// deep_copy fenced at both ends (Kokkos Tools callbacks), so that the time between two callbacks
// is that kernel's. A region such as a block's forward holds many kernels (norms, GELU, biases,
// copies) and products (KokkosBlas::gemm, a region of its own); this is what splits it.
//
// On OpenMP, also how evenly a kernel's work spreads over the threads: each thread's CPU time
// during the kernel (read in a parallel region at both ends), summed over the calls as the mean
// and the largest of the threads; mean / largest is 1 for perfect balance, and a kernel's wall
// time is its largest thread's. Meaningful with OMP_WAIT_POLICY=passive only (a spinning idle
// thread burns CPU time as if it worked), and with more threads than cores too (CPU time is not
// wall time): a 2-core machine can show how a launch would split over 16 cores.
struct KernelTimer {
  struct Open {
    std::string name;
    std::chrono::steady_clock::time_point start;
    std::vector<double> clocks;
  };
  struct Total {
    double seconds = 0, thread_mean = 0, thread_max = 0;
    long calls = 0;
  };
  static inline std::map<std::uint64_t, Open> open;
  static inline std::map<std::string, Total> totals;
  static inline std::uint64_t next = 0;
  static std::vector<double> thread_clocks() {
    std::vector<double> clocks;
#if defined(KOKKOS_ENABLE_OPENMP)
    if constexpr (std::is_same_v<Space, Kokkos::OpenMP>) {
      clocks.resize(omp_get_max_threads());
#pragma omp parallel
      {
        timespec t;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
        clocks[omp_get_thread_num()] = t.tv_sec + 1e-9 * t.tv_nsec;
      }
    }
#endif
    return clocks;
  }
  static void begin(const char* name, std::uint32_t, std::uint64_t* id) {
    Kokkos::fence();
    *id = next++;
    open[*id] = {name, std::chrono::steady_clock::now(), thread_clocks()};
  }
  static void end(std::uint64_t id) {
    Kokkos::fence();
    const auto now = std::chrono::steady_clock::now();
    const std::vector<double> clocks = thread_clocks();
    const auto it = open.find(id);
    if (it == open.end()) return;
    Total& t = totals[it->second.name];
    t.seconds += std::chrono::duration<double>(now - it->second.start).count();
    ++t.calls;
    if (!clocks.empty() && clocks.size() == it->second.clocks.size()) {
      double sum = 0, most = 0;
      for (std::size_t i = 0; i < clocks.size(); ++i) {
        sum += clocks[i] - it->second.clocks[i];
        most = std::max(most, clocks[i] - it->second.clocks[i]);
      }
      t.thread_mean += sum / clocks.size();
      t.thread_max += most;
    }
    open.erase(it);
  }
  static inline std::uint64_t copy_id = 0;
  static void begin_copy(Kokkos::Tools::SpaceHandle, const char* dst, const void*,
                         Kokkos::Tools::SpaceHandle, const char* src, const void*, std::uint64_t) {
    begin((std::string("deep_copy ") + dst + " <- " + src).c_str(), 0, &copy_id);
  }
  static void end_copy() {
    end(copy_id);
  }
  static void install(bool on) {
    namespace E = Kokkos::Tools::Experimental;
    E::set_begin_parallel_for_callback(on ? &begin : nullptr);
    E::set_end_parallel_for_callback(on ? &end : nullptr);
    E::set_begin_parallel_reduce_callback(on ? &begin : nullptr);
    E::set_end_parallel_reduce_callback(on ? &end : nullptr);
    E::set_begin_parallel_scan_callback(on ? &begin : nullptr);
    E::set_end_parallel_scan_callback(on ? &end : nullptr);
    E::set_begin_deep_copy_callback(on ? &begin_copy : nullptr);
    E::set_end_deep_copy_callback(on ? &end_copy : nullptr);
  }
};

// Model FLOPs of one token's forward (the convention of MFU, Chowdhery et al. 2022): 2 per
// weight of every product (the blocks' 12 E^2 per layer and the tied head's V E), and the
// attention's 4 d per (query, key) pair each head scores: a head of branch i sees w_i / r_i keys,
// half of them on average under a causal mask.
double forward_flops_per_token(const dilated::ModelShape& s, const dilated::Geometry& g,
                               bool causal) {
  const double e = s.embed_dim, d = e / s.num_heads;
  double pairs = 0;  // per query token, summed over heads and branches
  for (const auto& block : g.head_blocks()) {
    pairs += static_cast<double>(block.num_heads()) * g.segment_length(block.branch) /
             g.dilation_rate(block.branch) * (causal ? 0.5 : 1.0);
  }
  return s.layers * (2.0 * 12 * e * e + 4.0 * d * pairs) + 2.0 * s.vocab * e;
}

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream out;
  out.precision(9);
  out << x;
  return out.str();
}

// The log, rewritten whole (temporary + rename) so that a reader never sees half a file.
struct Log {
  std::string path;
  std::ostringstream config, steps, evals, summary;
  bool first_step = true, first_eval = true;
  void write() const {
    if (path.empty()) return;
    const std::string temporary = path + ".tmp";
    {
      std::ofstream out(temporary);
      out << "{\n\"config\": {" << config.str() << "},\n\"steps\": [" << steps.str()
          << "\n],\n\"evals\": [" << evals.str() << "\n],\n\"summary\": {" << summary.str()
          << "}\n}\n";
      if (!out) throw std::runtime_error("dilated_train: cannot write --log " + temporary);
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0)
      throw std::runtime_error("dilated_train: cannot rename " + temporary + " to " + path);
  }
};

template <class Block, class Optimizer>
int train(const Config& c) {
  using T = typename Block::value_type;
  using Model = dilated::LanguageModel<Block>;
  dilated::ModelShape shape =
      c.model == "custom" ? dilated::ModelShape{"custom", c.layers, c.embed, c.heads, c.vocab}
                          : dilated::ModelShape::named(c.model, c.vocab);
  dilated::LanguageModelOptions options;
  options.segment_lengths = c.segments;
  options.dilation_rates = c.dilations;
  options.semantics = dilated::semantics_from_string(c.semantics);
  options.checkpointing = c.checkpointing;
  options.gelu = dilated::gelu_approximation_from_string(c.gelu);
  options.loss_chunk_tokens = c.chunk;
  options.init_seed = c.seed;

  Space space;
  dilated::tools::MemoryTracker::install(Memory::name());
  dilated::tools::MemoryTracker::reset();
  Model model(shape, options);
  model.check_length("dilated_train", c.length);
  training::ByteCorpus train_data(c.data + "/train.bin", c.length, c.seed);
  training::ByteCorpus val_data(c.data + "/val.bin", c.length, c.seed + 1000);
  typename Model::Ids ids("dilated::train::ids", c.batch, c.length),
      targets("dilated::train::targets", c.batch, c.length);

  Optimizer optimizer(
      training::AdamWOptions().set_lr(c.lr).set_betas(0.9, 0.95).set_weight_decay(c.weight_decay));
  training::TrainerOptions trainer_options;
  trainer_options.max_norm = c.max_norm;
  trainer_options.schedule = training::WarmupCosineSchedule()
                                 .set_peak_lr(c.lr)
                                 .set_min_lr(c.min_lr)
                                 .set_warmup_steps(c.warmup)
                                 .set_total_steps(c.steps);
  training::Trainer<Model, Optimizer> trainer(model, optimizer, trainer_options);
  if (!c.resume.empty()) {
    const auto extra = trainer.load(space, c.resume, 2);
    training::CorpusSamplerState state = train_data.state();
    state.windows_drawn =
        static_cast<std::uint64_t>(extra[0]) * 4294967296ULL + static_cast<std::uint64_t>(extra[1]);
    train_data.restore(state);
    std::printf("resumed from %s at step %ld\n", c.resume.c_str(), trainer.steps_attempted());
  }

  const dilated::Geometry geometry(c.segments, c.dilations, shape.num_heads, options.semantics);
  const double flops_token = 3.0 * forward_flops_per_token(shape, geometry, true);
  const long tokens = static_cast<long>(c.batch) * c.length;

  Log log;
  log.path = c.log;
  log.config << "\"model\": \"" << shape.name << "\", \"layers\": " << shape.layers
             << ", \"embed_dim\": " << shape.embed_dim << ", \"heads\": " << shape.num_heads
             << ", \"vocab\": " << shape.vocab
             << ", \"parameters\": " << shape.parameter_count(!Block::is_custom)
             << ", \"block\": \"" << c.block << "\", \"policy\": \"" << c.policy
             << "\", \"dtype\": \"" << c.dtype << "\", \"optimizer\": \"" << c.optimizer
             << "\", \"checkpointing\": " << (c.checkpointing ? "true" : "false")
             << ", \"batch\": " << c.batch << ", \"sequence_length\": " << c.length
             << ", \"steps\": " << c.steps << ", \"lr\": " << json_number(c.lr)
             << ", \"semantics\": \"" << c.semantics << "\", \"gelu\": \"" << c.gelu
             << "\", \"device\": \"" << Space::name()
             << "\", \"flops_per_token\": " << json_number(flops_token);

  const auto eval = [&]() {
    val_data.restore({c.seed + 1000, 0});  // the same held-out windows every time
    double sum = 0;
    for (long i = 0; i < c.eval_batches; ++i) {
      val_data.draw(space, ids, targets);
      sum += model.loss(space, ids, targets);
    }
    return sum / c.eval_batches;
  };

  // What holds device memory now, by kind (the objects' own sizes; the tracker's peak is the
  // measured total): weights, gradients, optimizer state, saved activations, workspace.
  const auto gradient_bytes = [&]() {
    std::size_t bytes = 0;
    for (const auto& t : trainer.tensors())
      bytes += t.gradient.extent(0) * sizeof(T);
    return bytes;
  };
  const auto memory_split = [&]() {
    const auto memory = model.memory();
    std::ostringstream out;
    out << "\"weights_bytes\": " << memory.parameters
        << ", \"gradient_bytes\": " << gradient_bytes()
        << ", \"optimizer_bytes\": " << optimizer.state_bytes()
        << ", \"activation_bytes\": " << memory.activations
        << ", \"workspace_bytes\": " << memory.workspace;
    return out.str();
  };

  double timed_seconds = 0;
  long timed_steps = 0;
  std::printf("%s %s/%s %s, %lld parameters, n = %ld, batch %d, %s%s, gelu %s\n",
              shape.name.c_str(), c.block.c_str(), c.policy.c_str(), c.dtype.c_str(),
              shape.parameter_count(!Block::is_custom), c.length, c.batch, c.optimizer.c_str(),
              c.checkpointing ? ", checkpointing" : "", c.gelu.c_str());
  for (long step = trainer.steps_attempted(); step < c.steps; ++step) {
    train_data.draw(space, ids, targets);
    const auto start = std::chrono::steady_clock::now();
    const auto r = trainer.step(space, ids, targets);
    space.fence();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step >= 3) {  // the first steps allocate and plan: not the steady state
      timed_seconds += seconds;
      ++timed_steps;
    }
    const double peak_gib =
        static_cast<double>(dilated::tools::MemoryTracker::peak_extra()) / (1 << 30);
    std::printf(
        "step %5ld  loss %.4f  lr %.2e  norm %.3f  scale %g  %s %.0f tok/s  %.3f s  "
        "peak %.2f GiB\n",
        step, r.loss, r.lr, r.grad_norm, r.loss_scale, r.taken ? "" : "SKIPPED", tokens / seconds,
        seconds, peak_gib);
    std::fflush(stdout);
    log.steps << (log.first_step ? "\n" : ",\n") << "{\"step\": " << step
              << ", \"loss\": " << json_number(r.loss) << ", \"lr\": " << json_number(r.lr)
              << ", \"grad_norm\": " << json_number(r.grad_norm)
              << ", \"loss_scale\": " << json_number(r.loss_scale)
              << ", \"taken\": " << (r.taken ? "true" : "false")
              << ", \"seconds\": " << json_number(seconds)
              << ", \"peak_bytes\": " << dilated::tools::MemoryTracker::peak_extra() << ", "
              << memory_split() << "}";
    log.first_step = false;
    const bool last = step + 1 == c.steps;
    if ((c.eval_every > 0 && (step + 1) % c.eval_every == 0) || last) {
      const double val = eval();
      std::printf("eval  %5ld  held-out loss %.4f (%.3f bits/byte)\n", step, val,
                  val / std::log(2.0));
      log.evals << (log.first_eval ? "\n" : ",\n") << "{\"step\": " << step
                << ", \"val_loss\": " << json_number(val) << "}";
      log.first_eval = false;
      log.write();
    }
    if (!c.save.empty() && ((c.save_every > 0 && (step + 1) % c.save_every == 0) || last)) {
      const std::uint64_t drawn = train_data.state().windows_drawn;
      trainer.save(space, c.save,
                   {static_cast<double>(drawn >> 32), static_cast<double>(drawn & 0xffffffffULL)});
    }
  }

  if (c.profile_steps > 0) {
    RegionTimer::totals.clear();
    KernelTimer::totals.clear();
    Kokkos::Tools::Experimental::set_push_region_callback(&RegionTimer::push);
    Kokkos::Tools::Experimental::set_pop_region_callback(&RegionTimer::pop);
    KernelTimer::install(true);
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < c.profile_steps; ++i) {
      train_data.draw(space, ids, targets);
      trainer.step(space, ids, targets);
    }
    space.fence();
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Kokkos::Tools::Experimental::set_push_region_callback(nullptr);
    Kokkos::Tools::Experimental::set_pop_region_callback(nullptr);
    KernelTimer::install(false);
    std::printf("profile: %ld steps with fenced regions, %.4f s per step\n", c.profile_steps,
                total / c.profile_steps);
    log.summary << "\"profile_step_seconds\": " << json_number(total / c.profile_steps)
                << ", \"profile\": {";
    bool first = true;
    for (const auto& [name, t] : RegionTimer::totals) {
      std::printf("  %-60s %9.3f ms per step (%ld calls)\n", name.c_str(),
                  1e3 * t.first / c.profile_steps, t.second / c.profile_steps);
      log.summary << (first ? "" : ", ") << "\"" << name
                  << "\": " << json_number(t.first / c.profile_steps);
      first = false;
    }
    log.summary << "}, \"profile_kernels\": {";
    std::printf("profile: kernels (fenced)\n");
    first = true;
    for (const auto& [name, t] : KernelTimer::totals) {
      const double balance = t.thread_max > 0 ? t.thread_mean / t.thread_max : NAN;
      std::printf("  %-60s %9.3f ms per step (%ld calls), thread balance %.2f\n", name.c_str(),
                  1e3 * t.seconds / c.profile_steps, t.calls / c.profile_steps, balance);
      log.summary << (first ? "" : ", ") << "\"" << name
                  << "\": {\"seconds\": " << json_number(t.seconds / c.profile_steps)
                  << ", \"thread_balance\": " << json_number(balance) << "}";
      first = false;
    }
    log.summary << "}, ";
  }

  // The memory split, from the objects that hold it.
  const auto memory = model.memory();
  const double step_seconds = timed_steps > 0 ? timed_seconds / timed_steps : NAN;
  const double tokens_per_second = tokens / step_seconds;
  const double mfu = tokens_per_second * flops_token / (c.peak_tflops * 1e12);
  const auto gib = [](double bytes) { return bytes / (1 << 30); };
  // The first 3 steps are not timed (they allocate and plan): with no later step there is no
  // speed to report, which is said rather than printed as nan.
  char speed[160];
  if (timed_steps > 0)
    std::snprintf(speed, sizeof speed, "%.3f s/step, %.0f tokens/s, MFU %.1f %% of %.0f TFLOP/s",
                  step_seconds, tokens_per_second, 100 * mfu, c.peak_tflops);
  else
    std::snprintf(speed, sizeof speed, "no step timed (the first 3 are not: --steps 4 or more)");
  std::printf(
      "summary: %s; peak %.2f GiB (weights %.2f, gradients %.2f, optimizer %.2f, activations "
      "%.2f, workspace %.2f GiB); skipped steps %ld\n",
      speed, gib(dilated::tools::MemoryTracker::peak_extra()), gib(memory.parameters),
      gib(gradient_bytes()), gib(optimizer.state_bytes()), gib(memory.activations),
      gib(memory.workspace), trainer.scaler().skipped_steps());
  log.summary << "\"step_seconds\": " << json_number(step_seconds)
              << ", \"tokens_per_second\": " << json_number(tokens_per_second)
              << ", \"mfu\": " << json_number(mfu)
              << ", \"peak_tflops\": " << json_number(c.peak_tflops)
              << ", \"peak_bytes\": " << dilated::tools::MemoryTracker::peak_extra()
              << ", \"weights_bytes\": " << memory.parameters
              << ", \"gradient_bytes\": " << gradient_bytes()
              << ", \"optimizer_bytes\": " << optimizer.state_bytes()
              << ", \"activation_bytes\": " << memory.activations
              << ", \"workspace_bytes\": " << memory.workspace
              << ", \"skipped_steps\": " << trainer.scaler().skipped_steps();
  log.write();
  return 0;
}

template <class X>
struct Type {
  using type = X;
};

template <class T>
int dispatch_optimizer(const Config& c) {
  const auto with = [&](auto block) {
    using Block = typename decltype(block)::type;
    if (c.optimizer == "adamw") return train<Block, training::AdamW<T, Memory>>(c);
    return train<Block, training::AdamW8bit<T, Memory>>(c);
  };
  const auto tag = [](auto* p) { return Type<std::remove_pointer_t<decltype(p)>>{}; };
  const bool improved = c.policy == "improved";
  if (c.block == "standard")
    return improved ? with(tag((dilated::StandardTransformerBlock<dilated::Improved, T>*)nullptr))
                    : with(tag((dilated::StandardTransformerBlock<dilated::Original, T>*)nullptr));
  return improved ? with(tag((dilated::CustomTransformerBlock<dilated::Improved, T>*)nullptr))
                  : with(tag((dilated::CustomTransformerBlock<dilated::Original, T>*)nullptr));
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"Train a LongNet language model on a byte corpus (dilated::LanguageModel)"};
  app.add_option("--data", c.data,
                 "directory of train.bin and val.bin (scripts/prepare_corpus.sh)");
  app.add_option("--model", c.model, "small / 125M, medium / 350M, xl / 1.3B, or custom");
  app.add_option("--layers", c.layers, "custom model: layers");
  app.add_option("--embed", c.embed, "custom model: width");
  app.add_option("--heads", c.heads, "custom model: heads");
  app.add_option("--vocab", c.vocab, "vocabulary (256: bytes)")->check(CLI::Range(1, 1 << 24));
  app.add_option("--block", c.block, "standard or custom")
      ->check(CLI::IsMember({"standard", "custom"}));
  app.add_option("--policy", c.policy, "improved or original")
      ->check(CLI::IsMember({"improved", "original"}));
  app.add_option("--dtype", c.dtype, "storage and compute type: half, bf16 or float")
      ->check(CLI::IsMember({"half", "bf16", "float"}));
  app.add_option("--optimizer", c.optimizer, "adamw or adamw8bit")
      ->check(CLI::IsMember({"adamw", "adamw8bit"}));
  app.add_option("--semantics", c.semantics, "grouped (the peers) or longnet (the paper)")
      ->check(CLI::IsMember({"grouped", "longnet"}));
  app.add_flag("--checkpointing", c.checkpointing, "activation checkpointing per block");
  app.add_option("--gelu", c.gelu,
                 "the feed-forward's GELU: none (exact, PyTorch's default) or tanh (in the "
                 "products' epilogues on CUDA)")
      ->check(CLI::IsMember({"none", "tanh"}));
  app.add_option("--length", c.length, "tokens per sequence")->check(CLI::PositiveNumber);
  app.add_option("--batch", c.batch, "sequences per step")->check(CLI::PositiveNumber);
  app.add_option("--steps", c.steps, "training steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", c.warmup, "warm-up steps")->check(CLI::NonNegativeNumber);
  app.add_option("--lr", c.lr, "peak learning rate")->check(CLI::NonNegativeNumber);
  app.add_option("--min-lr", c.min_lr, "final learning rate")->check(CLI::NonNegativeNumber);
  app.add_option("--weight-decay", c.weight_decay)->check(CLI::NonNegativeNumber);
  app.add_option("--max-norm", c.max_norm, "gradient clipping (0: none)");
  app.add_option("--segments", c.segments, "segment lengths")->delimiter(',');
  app.add_option("--dilations", c.dilations, "dilation rates")->delimiter(',');
  app.add_option("--loss-chunk", c.chunk, "tokens per chunk of the loss")
      ->check(CLI::PositiveNumber);
  app.add_option("--eval-every", c.eval_every, "held-out loss every this many steps (0: at end)");
  app.add_option("--eval-batches", c.eval_batches)->check(CLI::PositiveNumber);
  app.add_option("--seed", c.seed);
  app.add_option("--log", c.log, "JSON log file");
  app.add_option("--save", c.save, "checkpoint directory (replaced whole)");
  app.add_option("--save-every", c.save_every, "checkpoint every this many steps (0: at end)");
  app.add_option("--resume", c.resume, "checkpoint directory to resume from");
  app.add_option("--profile", c.profile_steps,
                 "after the run, time the library's regions and kernels over this many more steps "
                 "(fenced)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--peak-tflops", c.peak_tflops,
                 "the device's dense fp16/bf16 peak for the MFU (H100/H200 SXM: 989.4)");
  CLI11_PARSE(app, argc, argv);
  Kokkos::ScopeGuard guard(argc, argv);
  try {
#if defined(DILATED_TRAIN_HALF_ONLY)
    // A build for one run (DilatedAttention_TRAIN_HALF_ONLY: a quarter of the instantiations,
    // which nvcc compiles in minutes instead of an hour on two cores).
    if (c.dtype != "half")
      throw std::invalid_argument("--dtype = " + c.dtype + ": this build has half only");
#if !DILATED_HALF_IS_FLOAT
    return dispatch_optimizer<Kokkos::Experimental::half_t>(c);
#else
    return dispatch_optimizer<float>(c);
#endif
#else
    if (c.dtype == "float") return dispatch_optimizer<float>(c);
#if !DILATED_HALF_IS_FLOAT
    if (c.dtype == "half") return dispatch_optimizer<Kokkos::Experimental::half_t>(c);
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
    if (c.dtype == "bf16") return dispatch_optimizer<Kokkos::Experimental::bhalf_t>(c);
#endif
    // A host-only Kokkos has no 16-bit types: half and bf16 are float there.
    return dispatch_optimizer<float>(c);
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dilated_train: %s\n", e.what());
    return 1;
  }
}
