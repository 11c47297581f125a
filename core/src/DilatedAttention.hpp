// DilatedAttention: LongNet dilated attention on Kokkos, and the multihead layer built on it.
// Include this one header.
#ifndef DILATED_ATTENTION_HPP
#define DILATED_ATTENTION_HPP

#include <Dilated_Config.hpp>
#include <Dilated_Compat.hpp>
#include <Dilated_Semantics.hpp>
#include <Dilated_AlgorithmPolicies.hpp>
#include <Dilated_Options.hpp>
#include <Dilated_Geometry.hpp>
#include <Dilated_SegmentView.hpp>
#include <Dilated_Reference.hpp>
#include <Dilated_Npy.hpp>
#include <Dilated_DilatedAttention.hpp>
#include <Dilated_MultiheadDilatedAttention.hpp>
#include <Dilated_SeedNames.hpp>

#endif  // DILATED_ATTENTION_HPP
