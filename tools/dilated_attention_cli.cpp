// dilated-attention: the command-line tool. `run` reads q, k, v (or a multihead layer's input and
// the weights directory its save() writes) from .npy files, runs one variant of this library on
// the default Kokkos device or on the host (--backend), writes the output (and optionally the
// log-sum-exp; with --dout, also the backward's dq, dk, dv) to .npy, and prints the timing and
// the peak extra device memory as text or JSON.
//
//   dilated-attention run --q q.npy --k k.npy --v v.npy --out out.npy [--lse lse.npy]
//       [--dout dout.npy --dq dq.npy --dk dk.npy --dv dv.npy] [--out-dtype float16]
//       [--algorithm improved] [--semantics grouped] [--segments 2048,4096,8192]
//       [--dilations 1,2,4] [--dtype float] [--causal] [--backend host] [--format json]
//   dilated-attention run --input x.npy --weights DIR --heads 12 --out y.npy [...]
//   dilated-attention info
//
// Host memory: arrays go between files and device Views a chunk at a time, converted on the way
// (Dilated_NpyStream.hpp): the host holds a few staging chunks beside what the device holds, so
// a run at billions of elements fits where its files do (issue 20).
//
// Exit status: 0 done; 1 bad command line; 2 a file or an argument the library rejects (missing,
// not .npy, truncated, unsupported dtype, wrong shape); 3 any other failure (out of memory: a
// buffer that does not fit, named with its bytes and memory space by dilated::DeviceOutOfMemory).
#include <DilatedAttention.hpp>
#include <Dilated_MemoryTracker.hpp>
#include <Dilated_NpyStream.hpp>
#include <impl/Dilated_HostBlas.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using dilated::tools::NpyFile;

// A file or argument the library cannot use: exit status 2.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RunOptions {
  // core: q, k, v (batch, seq, heads, head_dim); layer: input (batch, seq, embed_dim) + weights.
  std::string q, k, v, input, key_input, value_input, weights;
  std::string out, lse;
  std::string dout, dq, dk, dv;  // attention backward: dout in, gradients out
  std::string out_dtype = "auto";
  std::string algorithm = "improved", semantics = "grouped", dtype = "float", backend = "default";
  std::string format = "text";
  std::vector<int> segments = {2048, 4096, 8192}, dilations = {1, 2, 4};
  int heads = 0;
  bool causal = false;
  bool check_finite = false;
  std::optional<double> softmax_scale;
  double layer_norm_eps = 1e-5;
  int warmup = 0, repeats = 1;

  bool layer() const { return !input.empty(); }
  bool backward() const { return !dout.empty(); }
};

std::string shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// Opens a .npy file of floating-point values and checks its header (rank, extents, that the file
// holds the data); `what` names the array. The data is read later, into the device's View.
NpyFile open_array(const std::string& path, std::size_t rank, const std::string& what) {
  if (!std::filesystem::exists(path)) throw InputError(path + ": no such file (" + what + ")");
  if (std::filesystem::is_directory(path)) {
    throw InputError(path + ": is a directory, not a .npy file (" + what + ")");
  }
  NpyFile file;
  try {
    file = dilated::tools::open_npy(path);
  } catch (const dilated::npy::FormatError& e) {
    throw InputError(std::string(e.what()) + " (" + what + ")");
  }
  const auto& shape = file.header.shape;
  if (shape.size() != rank) {
    throw InputError(path + ": " + what + " has shape " + shape_string(shape) +
                     " but must have rank " + std::to_string(rank));
  }
  for (const auto extent : shape) {
    if (extent == 0) {
      throw InputError(path + ": " + what + " has shape " + shape_string(shape) +
                       ", an empty extent");
    }
  }
  return file;
}

void require_same_shape(const NpyFile& a, const NpyFile& b) {
  if (a.header.shape != b.header.shape) {
    throw InputError(b.path + " has shape " + shape_string(b.header.shape) + " but " + a.path +
                     " has shape " + shape_string(a.header.shape) + "; they must be equal");
  }
}

// A dense View of `file`'s shape holding its values in the View's storage type (read a chunk at
// a time, converted on the way; DeviceOutOfMemory naming `label` when it does not fit).
template <class View>
View load(const std::string& label, const NpyFile& file) {
  const auto& s = file.header.shape;
  View view;
  if constexpr (View::rank == 3) {
    view = dilated::Impl::allocate_view<View>(label, false, s.at(0), s.at(1), s.at(2));
  } else {
    view = dilated::Impl::allocate_view<View>(label, false, s.at(0), s.at(1), s.at(2), s.at(3));
  }
  try {
    dilated::tools::read_into(file, view);
  } catch (const dilated::npy::FormatError& e) {
    throw InputError(e.what());  // the file changed since its header was checked
  }
  return view;
}

// What `run` measured, for the report.
struct Measurement {
  std::vector<double> seconds;  // each timed call
  double extra_bytes = 0;       // peak device memory the calls allocated beyond their arguments
  double argument_bytes = 0;    // inputs and outputs (and the layer's parameters) on the device
};

template <class Space>
Measurement time_calls(const RunOptions& o, const std::function<void()>& call) {
  Measurement m;
  Space().fence();
  dilated::tools::MemoryTracker::reset();
  for (int i = 0; i < o.warmup + o.repeats; ++i) {
    Space().fence();
    Kokkos::Timer timer;
    call();
    Space().fence();
    if (i >= o.warmup) m.seconds.push_back(timer.seconds());
  }
  m.extra_bytes = static_cast<double>(dilated::tools::MemoryTracker::peak_extra());
  return m;
}

// The .npy dtype of the outputs (out, dq, dk, dv) for storage T: --out-dtype, or by default
// float64 for double storage and float32 otherwise (exact for float, half and bf16).
template <class T>
std::string output_dtype(const RunOptions& o) {
  if (o.out_dtype == "float16") return "<f2";
  if (o.out_dtype == "float32") return "<f4";
  if (o.out_dtype == "float64") return "<f8";
  return std::is_same_v<T, double> ? "<f8" : "<f4";
}

// The log-sum-exp's dtype: its accumulation type's, whatever --out-dtype says (a float16 lse
// would lose what the backward and a merge of branches need).
template <class Acc>
std::string lse_dtype() {
  return std::is_same_v<Acc, double> ? "<f8" : "<f4";
}

dilated::AttentionOptions attention_options(const RunOptions& o) {
  auto options =
      dilated::AttentionOptions().set_semantics(dilated::semantics_from_string(o.semantics));
  if (o.softmax_scale) options.set_softmax_scale(*o.softmax_scale);
  options.set_check_finite(o.check_finite);
  return options;
}

// inputs: q, k, v, and dout for a backward (o.backward()).
template <class Space, class T, class Algorithm>
Measurement run_core(const RunOptions& o, const std::vector<NpyFile>& inputs) {
  using Memory = typename Space::memory_space;
  using View4 = Kokkos::View<T****, Kokkos::LayoutRight, Memory>;
  using Acc = dilated::Impl::accumulation_t<T>;
  const dilated::DilatedAttention<Algorithm> attention(o.segments, o.dilations,
                                                       attention_options(o));
  const auto q = load<View4>("dilated::cli::q", inputs[0]);
  const auto k = load<View4>("dilated::cli::k", inputs[1]);
  const auto v = load<View4>("dilated::cli::v", inputs[2]);
  const auto same_as_q = [&](const char* label) {
    return dilated::Impl::allocate_view<View4>(label, true, q.extent(0), q.extent(1), q.extent(2),
                                               q.extent(3));
  };
  const auto out = same_as_q("dilated::cli::out");
  // The backward reads the forward's log-sum-exp: kept whenever there is one.
  const bool with_lse = !o.lse.empty() || o.backward();
  const auto lse = dilated::Impl::allocate_view<Kokkos::View<Acc***, Kokkos::LayoutRight, Memory>>(
      "dilated::cli::lse", true, with_lse ? q.extent(0) : 0, q.extent(1), q.extent(2));
  View4 dout, dq, dk, dv;
  if (o.backward()) {
    dout = load<View4>("dilated::cli::dout", inputs[3]);
    dq = same_as_q("dilated::cli::dq");
    dk = same_as_q("dilated::cli::dk");
    dv = same_as_q("dilated::cli::dv");
  }
  const dilated::ForwardOptions call{o.causal, false, 0};
  Measurement m = time_calls<Space>(o, [&] {
    if (with_lse) {
      attention.forward(Space(), q, k, v, out, lse, call);
    } else {
      attention.forward(Space(), q, k, v, out, call);
    }
    if (o.backward()) attention.backward(Space(), q, k, v, out, lse, dout, dq, dk, dv, call);
  });
  m.argument_bytes =
      double((o.backward() ? 8 : 4) * q.size()) * sizeof(T) + double(lse.size()) * sizeof(Acc);
  const std::string dtype = output_dtype<T>(o);
  if (!o.out.empty()) dilated::tools::write_from(o.out, out, dtype);
  if (!o.lse.empty()) dilated::tools::write_from(o.lse, lse, lse_dtype<Acc>());
  if (!o.dq.empty()) dilated::tools::write_from(o.dq, dq, dtype);
  if (!o.dk.empty()) dilated::tools::write_from(o.dk, dk, dtype);
  if (!o.dv.empty()) dilated::tools::write_from(o.dv, dv, dtype);
  return m;
}

// inputs: the layer's input, then its key and value inputs (null: the input).
template <class Space, class T, class Policy>
Measurement run_layer(const RunOptions& o, const NpyFile& x_file, const NpyFile* key_file,
                      const NpyFile* value_file) {
  using Memory = typename Space::memory_space;
  using View3 = Kokkos::View<T***, Kokkos::LayoutRight, Memory>;
  using Acc = dilated::Impl::accumulation_t<T>;
  namespace fs = std::filesystem;
  const int embed = static_cast<int>(x_file.header.shape[2]);
  // Which tensors the directory holds says whether the layer has biases and a sub-LayerNorm.
  const bool bias = fs::exists(fs::path(o.weights) / "q_proj.bias.npy");
  const bool layer_norm = fs::exists(fs::path(o.weights) / "norm.weight.npy");
  dilated::MultiheadDilatedAttention<Policy, T, Memory> layer(
      embed, o.heads, o.segments, o.dilations, 0.0, bias, layer_norm, o.layer_norm_eps, 1.0,
      dilated::semantics_from_string(o.semantics));
  try {
    layer.load(o.weights);
  } catch (const dilated::npy::FormatError& e) {
    throw InputError(std::string(e.what()) + " (layer weights)");
  }
  const auto x = load<View3>("dilated::cli::input", x_file);
  const View3 key = key_file ? load<View3>("dilated::cli::key_input", *key_file) : x;
  const View3 value = value_file ? load<View3>("dilated::cli::value_input", *value_file) : x;
  const auto out = dilated::Impl::allocate_view<View3>("dilated::cli::out", true, x.extent(0),
                                                       x.extent(1), x.extent(2));
  const dilated::ForwardOptions call{o.causal, false, 0};
  typename decltype(layer)::Activations saved;
  Measurement m = time_calls<Space>(o, [&] {
    if (o.lse.empty()) {
      layer.forward(Space(), x, key, value, out, call);
    } else {
      layer.forward(Space(), x, key, value, out, saved, call);
    }
  });
  double parameters = 0;
  for (const auto& t : layer.parameters().named_tensors())
    parameters += double(t.values.size()) * sizeof(T);
  m.argument_bytes =
      double(x.size()) * sizeof(T) * (2 + (key_file ? 1 : 0) + (value_file ? 1 : 0)) + parameters;
  dilated::tools::write_from(o.out, out, output_dtype<T>(o));
  if (!o.lse.empty()) dilated::tools::write_from(o.lse, saved.lse, lse_dtype<Acc>());
  return m;
}

template <class Space, class T>
Measurement run_typed(const RunOptions& o, const std::vector<NpyFile>& inputs) {
  if (o.layer()) {
    const NpyFile* key = o.key_input.empty() ? nullptr : &inputs[1];
    const NpyFile* value = o.value_input.empty() ? nullptr : &inputs[2];
    return o.algorithm == "original"
               ? run_layer<Space, T, dilated::Original>(o, inputs[0], key, value)
               : run_layer<Space, T, dilated::Improved>(o, inputs[0], key, value);
  }
  return o.algorithm == "original" ? run_core<Space, T, dilated::Original>(o, inputs)
                                   : run_core<Space, T, dilated::Improved>(o, inputs);
}

template <class Space>
Measurement run_on(const RunOptions& o, const std::vector<NpyFile>& inputs) {
  dilated::tools::MemoryTracker::install(Space::memory_space::name());
  if (o.dtype == "float") return run_typed<Space, float>(o, inputs);
  if (o.dtype == "double") return run_typed<Space, double>(o, inputs);
  // 16-bit storage on the default device only: on a GPU build the host's half kernels would
  // double the tool's compile time for a case nobody times.
  if constexpr (std::is_same_v<Space, Kokkos::DefaultExecutionSpace>) {
#if !DILATED_HALF_IS_FLOAT
    if (o.dtype == "half") return run_typed<Space, Kokkos::Experimental::half_t>(o, inputs);
#endif
#if DILATED_HAVE_BHALF && !DILATED_BHALF_IS_FLOAT
    if (o.dtype == "bf16") return run_typed<Space, Kokkos::Experimental::bhalf_t>(o, inputs);
#endif
  }
  if (!DILATED_HALF_IS_FLOAT && !std::is_same_v<Space, Kokkos::DefaultExecutionSpace>) {
    throw InputError("--dtype " + o.dtype + " runs on the default device only (--backend default)");
  }
  throw InputError("--dtype " + o.dtype +
                   ": this Kokkos build has no 16-bit type (a host-only Kokkos aliases half and "
                   "bf16 to float); use float or double");
}

// The variant's name in the seed's terms.
std::string variant_name(const RunOptions& o) {
  const bool improved = o.algorithm == "improved";
  return o.layer() ? (improved ? "ImprovedMultiheadDilatedAttention" : "MultiheadDilatedAttention")
                   : (improved ? "ImprovedDilatedAttention" : "DilatedAttention");
}

int run(const RunOptions& o) {
  // Read and check every file's header before touching the device.
  std::vector<NpyFile> inputs;
  if (o.layer()) {
    if (o.weights.empty()) throw InputError("--input needs --weights DIR (the layer's save())");
    if (!std::filesystem::is_directory(o.weights)) {
      throw InputError(o.weights + ": no such directory (--weights)");
    }
    if (o.heads < 1) throw InputError("--input needs --heads H (the layer's num_heads), H >= 1");
    if (o.softmax_scale) throw InputError("--softmax-scale applies to q/k/v runs only");
    if (o.check_finite) throw InputError("--check-finite applies to q/k/v runs only");
    if (o.backward()) throw InputError("--dout applies to q/k/v runs only");
    if (!o.dq.empty() || !o.dk.empty() || !o.dv.empty()) {
      throw InputError("--dq, --dk, --dv apply to q/k/v runs with --dout only");
    }
    inputs.push_back(open_array(o.input, 3, "layer input (batch, seq, embed_dim)"));
    inputs.emplace_back();
    inputs.emplace_back();
    if (!o.key_input.empty()) {
      inputs[1] = open_array(o.key_input, 3, "key input (batch, seq, embed_dim)");
      require_same_shape(inputs[0], inputs[1]);
    }
    if (!o.value_input.empty()) {
      inputs[2] = open_array(o.value_input, 3, "value input (batch, seq, embed_dim)");
      require_same_shape(inputs[0], inputs[2]);
    }
  } else {
    if (o.q.empty() || o.k.empty() || o.v.empty()) {
      throw InputError("give --q, --k and --v (attention) or --input and --weights (layer)");
    }
    const bool gradients = !o.dq.empty() || !o.dk.empty() || !o.dv.empty();
    if (gradients && !o.backward()) throw InputError("--dq, --dk, --dv need --dout (the backward)");
    if (o.backward() && !gradients) throw InputError("--dout needs --dq, --dk or --dv to write");
    inputs.push_back(open_array(o.q, 4, "q (batch, seq, heads, head_dim)"));
    inputs.push_back(open_array(o.k, 4, "k (batch, seq, heads, head_dim)"));
    inputs.push_back(open_array(o.v, 4, "v (batch, seq, heads, head_dim)"));
    require_same_shape(inputs[0], inputs[1]);
    require_same_shape(inputs[0], inputs[2]);
    if (o.backward()) {
      inputs.push_back(open_array(o.dout, 4, "dout (batch, seq, heads, head_dim)"));
      require_same_shape(inputs[0], inputs[3]);
    }
  }
  const auto shape = inputs[0].header.shape;

  Measurement m;
  std::string device;
  try {
    if (o.backend == "host") {
      device = Kokkos::DefaultHostExecutionSpace::name();
      m = run_on<Kokkos::DefaultHostExecutionSpace>(o, inputs);
    } else {
      device = Kokkos::DefaultExecutionSpace::name();
      m = run_on<Kokkos::DefaultExecutionSpace>(o, inputs);
    }
  } catch (const dilated::npy::FormatError& e) {
    throw InputError(e.what());  // the outputs could not be written
  }

  double total = 0, best = m.seconds.empty() ? 0 : m.seconds[0];
  for (const double s : m.seconds) {
    total += s;
    best = std::min(best, s);
  }
  const double mean = total / m.seconds.size();
  const double tokens = double(shape[0]) * shape[1];
  constexpr double MiB = 1024.0 * 1024.0;
  const char* pass = o.backward() ? "forward+backward" : "forward";
  std::vector<std::string> written;
  for (const std::string* path : {&o.out, &o.lse, &o.dq, &o.dk, &o.dv})
    if (!path->empty()) written.push_back(*path);
  if (o.format == "json") {
    nlohmann::ordered_json j;
    j["variant"] = variant_name(o);
    j["algorithm"] = o.algorithm;
    j["mode"] = o.layer() ? "layer" : "attention";
    j["device"] = device;
    j["dtype"] = o.dtype;
    j["semantics"] = o.semantics;
    j["causal"] = o.causal;
    j["segments"] = o.segments;
    j["dilations"] = o.dilations;
    j["shape"] = shape;
    if (o.layer()) j["heads"] = o.heads;
    j["warmup"] = o.warmup;
    j["pass"] = pass;
    j["time_ms"] = {{"mean", 1e3 * mean}, {"min", 1e3 * best}, {"calls", m.seconds.size()}};
    j["tokens_per_s"] = tokens / mean;
    j["extra_MiB"] = m.extra_bytes / MiB;
    j["arguments_MiB"] = m.argument_bytes / MiB;
    if (!o.out.empty()) j["out"] = o.out;
    if (!o.lse.empty()) j["lse"] = o.lse;
    if (!o.dq.empty()) j["dq"] = o.dq;
    if (!o.dk.empty()) j["dk"] = o.dk;
    if (!o.dv.empty()) j["dv"] = o.dv;
    // Paths may hold any bytes on Linux: what is not UTF-8 is written as U+FFFD (dump threw
    // type_error 316, exit status 3, after the outputs were written; found by fuzz_cli).
    std::cout << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    std::printf("%s on %s, %s, %s%s, input %s\n", variant_name(o).c_str(), device.c_str(),
                o.dtype.c_str(), o.semantics.c_str(), o.causal ? ", causal" : "",
                shape_string(shape).c_str());
    std::printf("time: %.3f ms mean, %.3f ms min over %zu call%s (%s; %.1f tokens/s)\n", 1e3 * mean,
                1e3 * best, m.seconds.size(), m.seconds.size() == 1 ? "" : "s", pass,
                tokens / mean);
    std::printf("memory: %.2f MiB peak extra on the device, beside %.2f MiB of arguments\n",
                m.extra_bytes / MiB, m.argument_bytes / MiB);
    std::string files;
    for (const auto& path : written)
      files += (files.empty() ? "" : ", ") + path;
    std::printf("wrote: %s\n", files.c_str());
  }
  return 0;
}

int info() {
  std::printf("dilated-attention %s\n", DILATED_VERSION_STRING);
  std::printf("default device: %s; host: %s\n", Kokkos::DefaultExecutionSpace::name(),
              Kokkos::DefaultHostExecutionSpace::name());
  std::printf("16-bit storage (half, bf16): %s\n",
              DILATED_HALF_IS_FLOAT ? "no (float on this build)" : "yes");
  // The host BLAS (the Original's host products, the layers' host GEMMs): OpenBLAS picks its
  // kernels for the CPU at load time, and a misdetected CPU runs them at a fraction of the rate.
  const auto blas = dilated::Impl::blas_info();
  if (!blas.built_in) {
    std::printf("host BLAS: none (built without Kokkos Kernels' BLAS)\n");
  } else if (!blas.openblas) {
    std::printf("host BLAS: Kokkos Kernels' BLAS (not OpenBLAS: no kernel report)\n");
  } else {
    const char* env = std::getenv("OPENBLAS_CORETYPE");
    const std::string chosen = env ? std::string("OPENBLAS_CORETYPE=") + env : "detected";
    std::printf("host BLAS: %s; kernels: %s (%s); threads: %d\n", blas.config.c_str(),
                blas.core.c_str(), chosen.c_str(), blas.threads);
    const std::string advice = dilated::Impl::openblas_coretype_advice(blas.core);
    if (!advice.empty())
      std::printf("host BLAS: this CPU has wider vectors than the %s kernels use: set %s\n",
                  blas.core.c_str(), advice.c_str());
  }
  std::ostringstream config;
  Kokkos::print_configuration(config, false);
  std::printf("%s", config.str().c_str());
  return 0;
}

}  // namespace

// The whole program, `main` without Kokkos' start when `start_kokkos` is false: the fuzz target
// fuzz/fuzz_cli.cpp compiles this file with DILATED_CLI_NO_MAIN and calls it on many command
// lines in one process, Kokkos started once.
int dilated_cli_main(int argc, char* argv[], bool start_kokkos) {
  // --kokkos-* arguments go to Kokkos, the rest to this parser, which runs first (so --help and
  // bad command lines end before Kokkos starts).
  std::vector<char*> kokkos_args = {argv[0]}, args = {argv[0]};
  for (int i = 1; i < argc; ++i)
    (std::string(argv[i]).rfind("--kokkos-", 0) == 0 ? kokkos_args : args).push_back(argv[i]);
  CLI::App app{"dilated-attention: LongNet dilated attention from .npy files (DilatedAttention " +
               std::string(DILATED_VERSION_STRING) + ")"};
  app.require_subcommand(1);
  RunOptions o;
  auto* run_cmd = app.add_subcommand(
      "run",
      "Run one variant on .npy inputs and write its output.\n"
      "Attention: --q, --k, --v of shape (batch, seq, heads, head_dim).\n"
      "Layer: --input of shape (batch, seq, embed_dim), --weights DIR (the layer's save(), "
      "PyTorch state_dict names: q_proj.weight.npy, ...), --heads H.\n"
      "Backward (attention): --dout of q's shape and any of --dq, --dk, --dv to write; --out is "
      "then optional.\n"
      "Inputs may be float16, float32 or float64 (C order, little-endian) and are rounded to "
      "--dtype.\nOutputs are float32 (float64 for --dtype double) unless --out-dtype says "
      "otherwise.\nArrays stream between files and the device a chunk at a time: the host holds "
      "a few staging chunks, not the arrays.\n"
      "Exit status: 0 done, 1 bad command line, 2 bad file or argument, 3 other failure.");
  run_cmd->add_option("--q", o.q, "queries .npy (batch, seq, heads, head_dim)");
  run_cmd->add_option("--k", o.k, "keys .npy, same shape as q");
  run_cmd->add_option("--v", o.v, "values .npy, same shape as q");
  run_cmd->add_option("--input", o.input, "layer input .npy (batch, seq, embed_dim)");
  run_cmd->add_option("--key-input", o.key_input,
                      "layer key input .npy for cross-attention (default: --input)");
  run_cmd->add_option("--value-input", o.value_input,
                      "layer value input .npy for cross-attention (default: --input)");
  run_cmd->add_option("--weights", o.weights,
                      "directory of the layer's weights (.npy files as save() writes them; "
                      "biases and the sub-LayerNorm are used when their files are there)");
  run_cmd->add_option("--heads", o.heads, "layer: number of heads (embed_dim % heads == 0)");
  run_cmd->add_option("--out", o.out, "output .npy to write (required unless --dout is given)");
  run_cmd->add_option("--lse", o.lse, "also write the log-sum-exp (batch, seq, heads) here");
  run_cmd->add_option("--dout", o.dout,
                      "attention only: gradient of the output .npy, same shape as q; runs the "
                      "backward after the forward (timed together)");
  run_cmd->add_option("--dq", o.dq, "with --dout: write dq here");
  run_cmd->add_option("--dk", o.dk, "with --dout: write dk here");
  run_cmd->add_option("--dv", o.dv, "with --dout: write dv here");
  run_cmd
      ->add_option("--out-dtype", o.out_dtype,
                   "dtype of the written out, dq, dk, dv: auto (float32; float64 for --dtype "
                   "double), float16 (exact for --dtype half, else rounded to nearest even), "
                   "float32 or float64; the lse keeps float32 (float64 for double)")
      ->check(CLI::IsMember({"auto", "float16", "float32", "float64"}))
      ->capture_default_str();
  run_cmd->add_option("--algorithm", o.algorithm, "original or improved")
      ->check(CLI::IsMember({"original", "improved"}))
      ->capture_default_str();
  run_cmd->add_option("--semantics", o.semantics, "grouped (the PyTorch peers) or longnet")
      ->check(CLI::IsMember({"grouped", "longnet"}))
      ->capture_default_str();
  run_cmd->add_option("--segments", o.segments, "segment lengths, comma separated")
      ->delimiter(',')
      ->capture_default_str();
  run_cmd->add_option("--dilations", o.dilations, "dilation rates, one per segment length")
      ->delimiter(',')
      ->capture_default_str();
  run_cmd->add_option("--dtype", o.dtype, "storage: float, double, half, bf16")
      ->check(CLI::IsMember({"float", "double", "half", "bf16"}))
      ->capture_default_str();
  run_cmd->add_flag("--causal", o.causal, "causal mask");
  run_cmd->add_flag("--check-finite", o.check_finite,
                    "attention only: reject a NaN or infinity in q, k, v (exit status 2, naming "
                    "the first one); without it they propagate to the rows that read them");
  run_cmd->add_option("--softmax-scale", o.softmax_scale,
                      "attention only: multiplies q.k (default 1/sqrt(head_dim))");
  run_cmd->add_option("--layer-norm-eps", o.layer_norm_eps, "layer: sub-LayerNorm epsilon")
      ->capture_default_str();
  // Not --device: Kokkos 3.4 reads --device=N itself (a GPU id) before this parser runs.
  run_cmd
      ->add_option("--backend", o.backend,
                   "where to run: default (Kokkos' default execution space: CUDA when built "
                   "for it) or host (Kokkos' default host space)")
      ->check(CLI::IsMember({"default", "host"}))
      ->capture_default_str();
  run_cmd->add_option("--warmup", o.warmup, "untimed calls before the timed ones")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  run_cmd->add_option("--repeats", o.repeats, "timed calls (the output is the last call's)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  run_cmd->add_option("--format", o.format, "report as text or json (on standard output)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  auto* info_cmd = app.add_subcommand("info", "Print the version and the Kokkos configuration.");

  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    const int status = app.exit(e);
    return status == 0 ? 0 : 1;
  }
  if (run_cmd->parsed() && o.out.empty() && o.dout.empty()) {
    // What CLI11's ->required() said when --out always was: a bad command line.
    std::fprintf(stderr,
                 "--out is required (or --dout with --dq, --dk or --dv)\nRun with --help "
                 "for more information.\n");
    return 1;
  }
  int kokkos_argc = static_cast<int>(kokkos_args.size());
  std::optional<Kokkos::ScopeGuard> kokkos;
  if (start_kokkos) kokkos.emplace(kokkos_argc, kokkos_args.data());
  try {
    if (info_cmd->parsed()) return info();
    return run(o);
  } catch (const InputError& e) {
    std::fprintf(stderr, "dilated-attention: error: %s\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "dilated-attention: error: %s\n", e.what());
    return 2;
  } catch (const dilated::DeviceOutOfMemory& e) {
    // The library's own message, one line: the buffer's label, the bytes asked, the memory
    // space, then Kokkos' message.
    std::fprintf(stderr, "dilated-attention: failed: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dilated-attention: failed: %s\n", e.what());
    return 3;
  }
}

#ifndef DILATED_CLI_NO_MAIN
int main(int argc, char* argv[]) {
  return dilated_cli_main(argc, argv, true);
}
#endif
