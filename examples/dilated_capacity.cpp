// dilated_capacity: the longest sequence (batch 1) a LongNet language model can train on within a
// device memory limit, predicted from the memory plan of a training step
// (training::plan_training_step) and then verified on the device by real training steps.
//
//   dilated_capacity --model small --block custom --policy improved --optimizer adamw8bit
//                    --checkpointing --memory-limit 80GB --json cell.json
//
// How (docs/capacity.md):
//  1. A probe step at the shortest length (one largest segment) in a child process measures what
//     the plan does not list: the CUDA context, the loaded kernels, cuBLAS's handles (the device's
//     bytes in use minus the plan's footprint at that length).
//  2. The prediction: the largest length whose plan footprint (the allocator's rounding included)
//     plus that runtime share fits the limit (lengths a multiple of the largest segment; with
//     --schedule geometric, 2048 times a power of two).
//  3. The verification, each in a child process under the same limit: two training steps
//     (forward, backward, optimizer) at the predicted length must succeed, and a step at the next
//     length must fail with the library's DeviceOutOfMemory (the buffer's label and bytes,
//     printed). Where either disagrees, the tool searches with more children and reports both the
//     predicted and the verified length.
// --memory-limit makes the device itself refuse allocations beyond the limit: each child takes
// the rest of the card up front (dilated::DeviceMemoryCap). On a build without a device the limit
// is bookkeeping only and nothing is verified.
//
// --run-length N runs one child (N tokens, --steps steps) and exits 0, 3 when an allocation does
// not fit (the message names it), 1 for other errors. Exit status of the tool: 0 when a length
// was verified (or, without a device, predicted); 2 when the model does not fit at the shortest
// length; 4 when a child failed otherwise.
#include <DilatedAttentionTraining.hpp>
#include <Dilated_MemoryTracker.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace training = dilated::training;
using dilated::MemoryKind;
using Space = Kokkos::DefaultExecutionSpace;
using Memory = Space::memory_space;

#if defined(KOKKOS_ENABLE_CUDA)
constexpr bool device_enforced = true;
#else
constexpr bool device_enforced = false;
#endif

struct Config {
  std::string model = "small", block = "custom", policy = "improved", dtype = "half",
              optimizer = "adamw", schedule = "default", semantics = "grouped", limit_text, json,
              reserve_text;
  int vocab = 50257, steps = 2;
  bool checkpointing = false;
  long run_length = 0, max_length = long(1) << 26, chunk = 4096;
  std::vector<std::string> child_args;  // what a child is run with
};

// "80GB" = 80e9 bytes, "80GiB" = 80 x 2^30, also kB/MB/TB, KiB/MiB/TiB, and plain bytes.
std::size_t parse_bytes(const std::string& option, const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    throw std::invalid_argument(option + " = '" + text + "' is not a size (e.g. 80GB, 80GiB)");
  }
  const std::string unit = text.substr(used);
  const std::pair<const char*, double> units[] = {{"", 1},
                                                  {"B", 1},
                                                  {"kB", 1e3},
                                                  {"KB", 1e3},
                                                  {"MB", 1e6},
                                                  {"GB", 1e9},
                                                  {"TB", 1e12},
                                                  {"KiB", 1024.0},
                                                  {"MiB", 1048576.0},
                                                  {"GiB", 1073741824.0},
                                                  {"TiB", 1099511627776.0}};
  for (const auto& [name, scale] : units)
    if (unit == name && value > 0) return static_cast<std::size_t>(value * scale);
  throw std::invalid_argument(option + " = '" + text + "' is not a positive size (e.g. 80GB)");
}

// The attention schedule for a length: the seed's (segments 2048 / 4096 / 8192, dilations
// 1 / 2 / 4) or LongNet's geometric one (segments doubling from 2048 up to the length, dilations
// doubling with them).
dilated::LanguageModelOptions options_for(const Config& c, long length) {
  dilated::LanguageModelOptions o;
  if (c.schedule == "geometric") {
    o.segment_lengths.clear();
    o.dilation_rates.clear();
    for (long w = 2048, r = 1; w <= length; w *= 2, r *= 2) {
      o.segment_lengths.push_back(static_cast<int>(w));
      o.dilation_rates.push_back(static_cast<int>(r));
    }
  }
  o.semantics = dilated::semantics_from_string(c.semantics);
  o.checkpointing = c.checkpointing;
  o.loss_chunk_tokens = c.chunk;
  return o;
}
// The lengths the schedule takes, in order: multiples of the seed schedule's largest segment,
// or 2048 x 2^k.
long nth_length(const Config& c, long k) {
  if (c.schedule == "geometric") return 2048L << (k - 1);
  const auto& segments = dilated::LanguageModelOptions().segment_lengths;
  return k * *std::max_element(segments.begin(), segments.end());
}

dilated::ModelShape shape_of(const Config& c) {
  return dilated::ModelShape::named(c.model, c.vocab);
}

double gib(double bytes) {
  return bytes / (1 << 30);
}

std::string split_json(const dilated::MemoryPlan& plan, bool pages) {
  std::ostringstream out;
  bool first = true;
  for (const auto kind : dilated::memory_kinds) {
    out << (first ? "" : ", ") << "\"" << dilated::to_string(kind)
        << "\": " << plan.footprint(kind, pages);
    first = false;
  }
  return out.str();
}

// ---------------------------------------------------------------- the child: real steps

template <class Block, class Optimizer>
int run_steps(const Config& c, long length) {
  using Model = dilated::LanguageModel<Block>;
  using T = typename Block::value_type;
  const dilated::ModelShape shape = shape_of(c);
  const auto options = options_for(c, length);
  const dilated::DeviceMemoryInfo start = dilated::device_memory_info();
  std::optional<dilated::DeviceMemoryCap> cap;
  if (!c.limit_text.empty() && device_enforced)
    cap.emplace(parse_bytes("--memory-limit", c.limit_text));
  dilated::tools::MemoryTracker::install(Memory::name());
  dilated::tools::MemoryTracker::reset();
  // Where a child's time goes (stderr; the parent shows it when a child fails or is cut off,
  // and a child run by hand with --run-length shows it as it goes).
  const auto born = std::chrono::steady_clock::now();
  const auto progress = [&](const std::string& what) {
    std::fprintf(stderr, "[n = %ld, %.1f s] %s\n", length,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - born).count(),
                 what.c_str());
  };
  Space space;
  Model model(shape, options);
  model.check_length("dilated_capacity", length);
  progress("model built");
  Optimizer optimizer;
  training::Trainer<Model, Optimizer> trainer(model, optimizer, training::TrainerOptions());
  progress("optimizer and trainer built");
  typename Model::Ids ids("dilated::training::token_ids", 1, length),
      targets("dilated::training::token_ids", 1, length);
  {
    auto host = Kokkos::create_mirror_view(ids);
    std::mt19937 engine(1);
    for (long t = 0; t < length; ++t)
      host(0, t) = static_cast<int>(engine() % shape.vocab);
    Kokkos::deep_copy(ids, host);
    Kokkos::deep_copy(targets, host);
  }
  double seconds = 0;
  training::StepResult r;
  for (int step = 0; step < c.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    r = trainer.step(space, ids, targets);
    space.fence();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress("step " + std::to_string(step) + " done");
  }
  const dilated::DeviceMemoryInfo end = dilated::device_memory_info();
  const auto plan = training::plan_training_step<Model, Optimizer>(shape, options, 1, length);
  std::size_t gradients = 0;
  for (const auto& t : trainer.tensors())
    gradients += t.gradient.extent(0) * sizeof(T);
  const auto memory = model.memory();
  // Bytes in use on the device beyond the ballast (the context included).
  const double used =
      end.total > 0 && cap ? double(end.used()) - double(cap->ballast_bytes()) : double(end.used());
  std::printf(
      "RESULT {\"length\": %ld, \"steps\": %d, \"step_seconds\": %.6f, \"loss\": %.6f, "
      "\"tracked_peak_bytes\": %lld, \"device_used_bytes\": %.0f, \"device_used_at_start\": %zu, "
      "\"device_total_bytes\": %zu, "
      "\"plan_bytes\": %zu, \"plan_footprint\": %zu, \"held\": {\"weights\": %zu, "
      "\"gradients\": %zu, \"optimizer\": %zu, \"activations\": %zu, \"workspace\": %zu, "
      "\"attention_workspace\": %zu, \"loss_workspace\": %zu}}\n",
      length, c.steps, seconds, r.loss,
      static_cast<long long>(dilated::tools::MemoryTracker::peak_extra()), used, start.used(),
      cap ? cap->limit_bytes() : end.total, plan.bytes(), plan.footprint(device_enforced),
      memory.parameters, gradients, optimizer.state_bytes(), memory.activations, memory.workspace,
      memory.attention_workspace, memory.loss_workspace);
  std::printf("trained %ld tokens: %d steps, the last %.3f s, loss %.4f; peak %.2f GiB tracked\n",
              length, c.steps, seconds, r.loss,
              gib(static_cast<double>(dilated::tools::MemoryTracker::peak_extra())));
  return 0;
}

// ---------------------------------------------------------------- the parent: plan and verify

template <class Block, class Optimizer>
dilated::MemoryPlan plan_at(const Config& c, long length) {
  return training::plan_training_step<dilated::LanguageModel<Block>, Optimizer>(
      shape_of(c), options_for(c, length), 1, length);
}

struct ChildResult {
  int status = -1;  // 0 ok, 3 out of memory, else failed
  std::string output, result_json, oom;
};

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s)
    out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

ChildResult run_child(const Config& c, const std::string& self, long length, bool probe) {
  std::string command = quote(self);
  for (const auto& a : c.child_args)
    command += " " + quote(a);
  command += " --run-length " + std::to_string(length);
  if (probe) command += " --steps 1";
  command += " 2>&1";
  ChildResult r;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("dilated_capacity: cannot start " + self);
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) {
    r.output += buffer;
    // The child's progress lines, as they come: a cell cut off from outside still shows where.
    if (std::strncmp(buffer, "[n = ", 5) == 0) {
      std::printf("    %s", buffer);
      std::fflush(stdout);
    }
  }
  const int status = pclose(pipe);
  r.status =
      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("RESULT ", 0) == 0) r.result_json = line.substr(7);
    if (line.find("out of ") != std::string::npos && line.find("memory") != std::string::npos)
      r.oom = line;
  }
  // The child's wall time (start, model, steps, exit): where a cell's time goes.
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("  n = %-9ld %s (%.1f s)\n", length,
              r.status == 0   ? "trained"
              : r.status == 3 ? ("out of memory: " + r.oom).c_str()
                              : ("FAILED (status " + std::to_string(r.status) + ")").c_str(),
              seconds);
  if (r.status != 0 && r.status != 3) std::printf("%s\n", r.output.c_str());
  std::fflush(stdout);
  return r;
}

double json_value(const std::string& json, const std::string& key) {
  return nlohmann::json::parse(json).at(key).get<double>();
}

template <class Block, class Optimizer>
int capacity(const Config& c, const std::string& self) {
  const dilated::ModelShape shape = shape_of(c);
  const bool pages = device_enforced;
  std::size_t limit = 0;
  if (!c.limit_text.empty()) limit = parse_bytes("--memory-limit", c.limit_text);
  if (limit == 0 && !device_enforced)
    throw std::invalid_argument("--memory-limit is required on a build without a device");

  // 1. The runtime's share, measured by a probe step at the shortest length.
  const long shortest = nth_length(c, 1);
  double runtime = c.reserve_text.empty() ? 0 : double(parse_bytes("--reserve", c.reserve_text));
  ChildResult probe;
  if (device_enforced && c.reserve_text.empty()) {
    std::printf("probe at n = %ld (what the plan does not list: context, kernels, cuBLAS)\n",
                shortest);
    probe = run_child(c, self, shortest, true);
    if (probe.status == 0) {
      // The plan enters the Original's score workspaces at their bound, which a short probe
      // does not reach: what the plan asked beyond the bytes allocated is not the runtime's.
      runtime = json_value(probe.result_json, "device_used_bytes") -
                json_value(probe.result_json, "plan_footprint") +
                (json_value(probe.result_json, "plan_bytes") -
                 json_value(probe.result_json, "tracked_peak_bytes"));
      if (limit == 0)
        limit = static_cast<std::size_t>(json_value(probe.result_json, "device_total_bytes"));
    }
  }
  // 2. The prediction: the largest length whose plan fits (the plan grows with the length, for
  // either schedule: the step's index k doubles until it does not fit, then is bisected). The
  // geometric schedule's k-th length has k branches: grouped heads take at most num_heads.
  const auto fits = [&](long k) {
    if (c.schedule == "geometric" && k > shape.num_heads) return false;
    return nth_length(c, k) <= c.max_length &&
           double(plan_at<Block, Optimizer>(c, nth_length(c, k)).footprint(pages)) + runtime <=
               double(limit);
  };
  long predicted_k = 0;
  if (fits(1)) {
    long lo = 1, hi = 2;
    while (fits(hi)) {
      lo = hi;
      hi *= 2;
    }
    while (hi - lo > 1) {
      const long mid = (lo + hi) / 2;
      (fits(mid) ? lo : hi) = mid;
    }
    predicted_k = lo;
  }
  const long predicted = predicted_k > 0 ? nth_length(c, predicted_k) : 0;
  const auto plan = plan_at<Block, Optimizer>(c, predicted > 0 ? predicted : shortest);
  std::printf("%s %s/%s %s %s%s, %s schedule, limit %.2f GiB (%s), runtime share %.2f GiB\n",
              shape.name.c_str(), c.block.c_str(), c.policy.c_str(), c.dtype.c_str(),
              c.optimizer.c_str(), c.checkpointing ? " + checkpointing" : "", c.schedule.c_str(),
              gib(double(limit)), c.limit_text.empty() ? "the device" : c.limit_text.c_str(),
              gib(runtime));
  std::printf(
      "predicted: n = %ld (plan %.2f GiB: weights %.2f, master %.2f, gradients %.2f, "
      "optimizer %.2f, activations %.2f, workspace %.2f, attention %.2f, loss %.2f)\n",
      predicted, gib(double(plan.footprint(pages))),
      gib(double(plan.footprint(MemoryKind::weights, pages))),
      gib(double(plan.footprint(MemoryKind::master_weights, pages))),
      gib(double(plan.footprint(MemoryKind::gradients, pages))),
      gib(double(plan.footprint(MemoryKind::optimizer_state, pages))),
      gib(double(plan.footprint(MemoryKind::activations, pages))),
      gib(double(plan.footprint(MemoryKind::workspace, pages))),
      gib(double(plan.footprint(MemoryKind::attention_workspace, pages))),
      gib(double(plan.footprint(MemoryKind::loss_workspace, pages))));
  std::fflush(stdout);

  // 3. The verification on the device.
  long verified = predicted;
  ChildResult at, above;
  int status = predicted > 0 ? 0 : 2;
  if (device_enforced) {
    const auto ok = [&](long k, ChildResult& r) {
      r = run_child(c, self, nth_length(c, k), false);
      if (r.status != 0 && r.status != 3) throw std::runtime_error("a verification step failed");
      return r.status == 0;
    };
    // Bisects between lo (trains, or 0) and hi (refused): the last length that trains.
    const auto narrow = [&](long lo, long hi) {
      while (hi - lo > 1) {
        const long mid = (lo + hi) / 2;
        ChildResult r;
        if (ok(mid, r)) {
          lo = mid;
          at = r;
        } else {
          hi = mid;
          above = r;
        }
      }
      return lo;
    };
    try {
      if (predicted_k == 0) {
        // Show the device refusing the shortest length (the clean error), then give up.
        ok(1, above);
        verified = above.status == 0 ? shortest : 0;
        if (verified > 0) std::printf("the plan was wrong: the shortest length trains\n");
        status = verified > 0 ? 0 : 2;
      } else if (!ok(predicted_k, at)) {
        // hi fails; search down, a step at a time first (a wrong plan is off by little).
        long hi = predicted_k, lo = 0;
        above = at;
        for (long k = predicted_k - 1; k >= 1 && k >= predicted_k - 3 && lo == 0; --k) {
          ChildResult r;
          if (ok(k, r)) {
            lo = k;
            at = r;
          } else {
            hi = k;
            above = r;
          }
        }
        lo = narrow(lo, hi);
        verified = lo > 0 ? nth_length(c, lo) : 0;
        status = verified > 0 ? 0 : 2;
      } else if (ok(predicted_k + 1, above)) {
        // lo trains; search up, a step at a time first, then doubling the step.
        long lo = predicted_k + 1, step = 1, hi = 0;
        at = above;
        ChildResult r;
        while (ok(lo + step, r)) {
          lo += step;
          at = r;
          step *= 2;
        }
        hi = lo + step;
        above = r;
        verified = nth_length(c, narrow(lo, hi));
      }
    } catch (const std::runtime_error& e) {
      std::fprintf(stderr, "dilated_capacity: %s\n", e.what());
      status = 4;
    }
    std::printf("verified: n = %ld trains%s; the next length: %s\n", verified,
                verified == predicted ? " (as predicted)" : " (the prediction was wrong)",
                above.oom.empty() ? "(not run)" : above.oom.c_str());
  } else if (predicted == 0) {
    std::fprintf(stderr,
                 "dilated_capacity: the model does not fit in --memory-limit = %s: at the shortest "
                 "length (%ld) a step needs %.3f GiB\n",
                 c.limit_text.c_str(), shortest, gib(double(plan.footprint(pages))));
  }
  if (status == 2)
    std::fprintf(stderr, "dilated_capacity: no length of this model trains within the limit\n");

  if (!c.json.empty()) {
    const std::string temporary = c.json + ".tmp";
    {
      std::ofstream out(temporary);
      out << "{\"model\": \"" << shape.name
          << "\", \"parameters\": " << shape.parameter_count(!Block::is_custom) << ", \"block\": \""
          << c.block << "\", \"policy\": \"" << c.policy << "\", \"dtype\": \"" << c.dtype
          << "\", \"optimizer\": \"" << c.optimizer
          << "\", \"checkpointing\": " << (c.checkpointing ? "true" : "false")
          << ", \"schedule\": \"" << c.schedule << "\", \"semantics\": \"" << c.semantics
          << "\", \"limit_bytes\": " << limit << ", \"runtime_bytes\": " << runtime
          << ", \"predicted\": " << predicted << ", \"verified\": " << verified
          << ", \"device_verified\": " << (device_enforced ? "true" : "false") << ", \"plan\": {"
          << split_json(plan, pages)
          << "}, \"at\": " << (at.result_json.empty() ? "null" : at.result_json)
          << ", \"above_error\": \"";
      for (char ch : above.oom)
        out << (ch == '"' || ch == '\\' ? std::string("\\") + ch : std::string(1, ch));
      out << "\", \"status\": " << status << "}\n";
      if (!out) throw std::runtime_error("cannot write --json " + temporary);
    }
    if (std::rename(temporary.c_str(), c.json.c_str()) != 0)
      throw std::runtime_error("cannot rename " + temporary + " to " + c.json);
  }
  return status;
}

template <class X>
struct Type {
  using type = X;
};

template <class T>
int dispatch(const Config& c, const std::string& self) {
  const auto with = [&](auto block) {
    using Block = typename decltype(block)::type;
    const auto go = [&](auto optimizer) {
      using Optimizer = typename decltype(optimizer)::type;
      if (c.run_length > 0) return run_steps<Block, Optimizer>(c, c.run_length);
      return capacity<Block, Optimizer>(c, self);
    };
    if (c.optimizer == "adamw") return go(Type<training::AdamW<T, Memory>>{});
    return go(Type<training::AdamW8bit<T, Memory>>{});
  };
  const bool improved = c.policy == "improved";
  if (c.block == "standard")
    return improved ? with(Type<dilated::StandardTransformerBlock<dilated::Improved, T>>{})
                    : with(Type<dilated::StandardTransformerBlock<dilated::Original, T>>{});
  return improved ? with(Type<dilated::CustomTransformerBlock<dilated::Improved, T>>{})
                  : with(Type<dilated::CustomTransformerBlock<dilated::Original, T>>{});
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"The longest sequence a LongNet language model trains on within a memory limit"};
  app.add_option("--model", c.model, "small / 125M, medium / 350M, xl / 1.3B");
  app.add_option("--vocab", c.vocab, "vocabulary (GPT-2's 50257)")->check(CLI::Range(1, 1 << 24));
  app.add_option("--block", c.block, "standard or custom")
      ->check(CLI::IsMember({"standard", "custom"}));
  app.add_option("--policy", c.policy, "improved or original")
      ->check(CLI::IsMember({"improved", "original"}));
  app.add_option("--dtype", c.dtype, "half (fp32 master weights) or float")
      ->check(CLI::IsMember({"half", "float"}));
  app.add_option("--optimizer", c.optimizer, "adamw or adamw8bit")
      ->check(CLI::IsMember({"adamw", "adamw8bit"}));
  app.add_flag("--checkpointing", c.checkpointing, "activation checkpointing per block");
  app.add_option("--schedule", c.schedule,
                 "default (segments 2048,4096,8192, dilations 1,2,4) or geometric (LongNet's)")
      ->check(CLI::IsMember({"default", "geometric"}));
  app.add_option("--semantics", c.semantics, "grouped (the peers) or longnet (the paper)")
      ->check(CLI::IsMember({"grouped", "longnet"}));
  app.add_option("--memory-limit", c.limit_text,
                 "device memory in all, e.g. 80GB (10^9) or 80GiB; the device enforces it");
  app.add_option("--reserve", c.reserve_text,
                 "the runtime's share instead of measuring it with a probe (e.g. 1GiB)");
  app.add_option("--max-length", c.max_length, "longest length searched")
      ->check(CLI::PositiveNumber);
  app.add_option("--loss-chunk", c.chunk, "tokens per chunk of the loss")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", c.json, "write the result as JSON");
  app.add_option("--run-length", c.run_length, "run --steps steps at this length and exit")
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", c.steps, "steps of a --run-length run")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  // A child gets the same configuration (not the parent's --json or --run-length).
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" || a == "--run-length" || a == "--steps") {
      ++i;
      continue;
    }
    if (a.rfind("--json=", 0) == 0 || a.rfind("--run-length=", 0) == 0) continue;
    c.child_args.push_back(a);
  }
  try {
    shape_of(c);  // an unknown model name fails here, before any device work
    if (!c.limit_text.empty()) parse_bytes("--memory-limit", c.limit_text);
    if (!c.reserve_text.empty()) parse_bytes("--reserve", c.reserve_text);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dilated_capacity: %s\n", e.what());
    return 1;
  }
  // The parent plans without a device context (a context would take memory from the children).
  std::optional<Kokkos::ScopeGuard> guard;
  if (c.run_length > 0) guard.emplace(argc, argv);
  try {
    // The children run this executable (its path: /proc/self/exe names the shell in popen).
    std::vector<char> path(4096, '\0');
    const ssize_t size = readlink("/proc/self/exe", path.data(), path.size() - 1);
    const std::string self = size > 0 ? std::string(path.data(), size) : std::string(argv[0]);
#if !DILATED_HALF_IS_FLOAT
    if (c.dtype == "half") return dispatch<Kokkos::Experimental::half_t>(c, self);
#endif
    return dispatch<float>(c, self);
  } catch (const dilated::DeviceOutOfMemory& e) {
    std::fprintf(stderr, "dilated_capacity: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    std::fprintf(stderr, "dilated_capacity: %s\n", e.what());
    return dilated::Impl::is_allocation_failure(what) ? 3 : 1;
  }
}
