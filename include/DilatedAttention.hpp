// DilatedAttention: LongNet dilated attention on Kokkos, and the layers built on it (the
// multihead layer, the seed's two transformer blocks, the language model's token layers).
// Include this one header; DilatedAttentionTraining.hpp adds what trains them. It sits in
// include/, above the folders it gathers (docs/architecture.md).
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
#include <Dilated_FeedForward.hpp>
#include <Dilated_StandardTransformerBlock.hpp>
#include <Dilated_CustomTransformerBlock.hpp>
#include <Dilated_Embedding.hpp>
#include <Dilated_CrossEntropy.hpp>
#include <Dilated_SeedNames.hpp>

#endif  // DILATED_ATTENTION_HPP
