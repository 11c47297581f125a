// Prints the dilated pattern: for every branch and head, which of the n positions the head
// keeps (a letter per segment: a, b, c, ...) and which it skips (.).
//
//   dilated_pattern --segments 4,8 --dilations 1,2 --heads 2 --length 8 --semantics longnet
#include <DilatedAttention.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char* argv[]) {
  CLI::App app{"Print which positions each head of dilated attention keeps."};
  std::vector<int> segments = {4, 8}, dilations = {1, 2};
  int heads = 4, length = 16;
  std::string semantics = "longnet";
  app.add_option("--segments", segments, "segment lengths, comma separated")->delimiter(',');
  app.add_option("--dilations", dilations, "dilation rates, one per segment length")
      ->delimiter(',');
  app.add_option("--heads", heads, "number of heads");
  app.add_option("--length", length, "sequence length n (any n >= 1)");
  app.add_option("--semantics", semantics, "grouped (the PyTorch peers) or longnet (the paper)")
      ->check(CLI::IsMember({"grouped", "longnet"}));
  CLI11_PARSE(app, argc, argv);

  try {
    const dilated::Geometry g(segments, dilations, heads,
                              dilated::semantics_from_string(semantics));
    if (length < 1) throw std::invalid_argument("dilated_pattern: --length must be >= 1");
    std::printf("%s semantics, n = %d, %d heads\n", semantics.c_str(), length, heads);
    for (int i = 0; i < g.num_branches(); ++i) {
      for (int h = 0; h < heads; ++h) {
        std::string row(length, '.');
        for (int p = 0; p < length; ++p) {
          if (g.keeps(i, h, p, length))
            row[p] = static_cast<char>('a' + g.segment_of(i, p, length) % 26);
        }
        const int o = g.offset(i, h);
        if (o < 0) {
          std::printf("branch %d (s=%d, r=%d) head %d: not in this branch\n", i,
                      g.segment_length(i), g.dilation_rate(i), h);
        } else {
          std::printf("branch %d (s=%d, r=%d) head %d offset %d: %s\n", i, g.segment_length(i),
                      g.dilation_rate(i), h, o, row.c_str());
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
