// The outputs of the real peer code (../shared/golden, float64): the reference must reproduce
// every case of manifest.json to 1e-10, in both semantics, causal and not.
#include <DilatedAttention.hpp>
#include <Dilated_Allclose.hpp>
#include <Dilated_TestData.hpp>

#include <catch2/catch_test_macros.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

TEST_CASE("reference reproduces every golden case", "[golden][reference]") {
  const std::string dir = dilated::testing::golden_dir();
  std::ifstream manifest_file(dir + "/manifest.json");
  REQUIRE(manifest_file.good());
  const auto manifest = nlohmann::json::parse(manifest_file);
  // The manifest shipped with this project has 9 cases; a shorter one means a broken checkout.
  REQUIRE(manifest.size() >= 9);
  int grouped = 0, longnet = 0, causal_cases = 0;
  for (const auto& c : manifest) {
    const std::string name = c.at("name");
    CAPTURE(name);
    REQUIRE(c.at("softmax_scale") == "1/sqrt(d)");
    const auto semantics = dilated::semantics_from_string(c.at("semantics").get<std::string>());
    const dilated::Geometry g(c.at("segs").get<std::vector<int>>(),
                              c.at("dils").get<std::vector<int>>(), c.at("h").get<int>(),
                              semantics);
    const auto q = dilated::testing::load_bnhd(dir + "/" + name + "/q.npy");
    const auto k = dilated::testing::load_bnhd(dir + "/" + name + "/k.npy");
    const auto v = dilated::testing::load_bnhd(dir + "/" + name + "/v.npy");
    const auto expected = dilated::testing::load_bnhd(dir + "/" + name + "/out.npy");
    REQUIRE(q.extent(0) == c.at("b").get<std::size_t>());
    REQUIRE(q.extent(1) == c.at("n").get<std::size_t>());
    REQUIRE(q.extent(3) == c.at("d").get<std::size_t>());
    Kokkos::View<double****, Kokkos::HostSpace> out("out", q.extent(0), q.extent(1), q.extent(2),
                                                    q.extent(3));
    const bool causal = c.at("causal").get<bool>();
    dilated::reference(g, q, k, v, out, {causal, std::nullopt});
    const auto result = dilated::testing::allclose(out, expected, 0.0, 1e-10);
    INFO(result.describe());
    CHECK(result.ok());
    grouped += semantics == dilated::Semantics::grouped;
    longnet += semantics == dilated::Semantics::longnet;
    causal_cases += causal;
  }
  REQUIRE(grouped >= 5);
  REQUIRE(longnet >= 4);
  REQUIRE(causal_cases >= 3);
}
