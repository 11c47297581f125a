// Tile shapes of the tensor-core kernels (CUDA, half/bf16), kept out of the kernels like
// ImprovedTiles (Dilated_TilePolicies.hpp): the Improved algorithm's mma.sync forward and
// backward (sm_80 and later) and wgmma forward (sm_90a), and the Original algorithm's mma.sync
// forward and backward. A team of these kernels is 4 warps; team
// scratch (level 0) must stay within the 48 KiB of a block less Kokkos' reserve.
#ifndef DILATED_TENSOR_CORE_TILE_POLICIES_HPP
#define DILATED_TENSOR_CORE_TILE_POLICIES_HPP

namespace dilated {

// Per head_dim: query rows per warp (16-row m-tiles), key tile rows and teams per
// multiprocessor; two stages of K and V tiles must fit the level-0 scratch Kokkos grants a team
// (48 KiB less its reserve, about 40 KiB). d = 64 gives each warp two m-tiles (32 rows, 128 per
// team) and 64-key tiles: every K and V fragment read from shared memory feeds two mma instead of
// one and the per-tile overhead is spread over twice the work; the registers this needs (two
// score and two output tiles, Q's fragments) allow 2 teams (255 registers) per multiprocessor.
// d = 128 keeps one m-tile per warp and 32-key tiles at 3 teams (168 registers; its output
// tile alone is 64 registers). Q's fragments live in registers, its tile passes through the
// second stage first. (Measured alternatives, slower: docs/performance-notes.md.)
template <int D>
struct MmaForwardTiles {
  static constexpr int m_tiles = D <= 64 ? 2 : 1;  // 16-row m-tiles per warp
  static constexpr int query_rows = 4 * 16 * m_tiles;
  static constexpr int key_rows = D <= 64 ? 64 : 32;
  static constexpr int ld = D + 8;  // halves per scratch row: 16 bytes of padding, no conflicts
  static constexpr int stage_halves = 2 * key_rows * ld;  // K and V of one stage
  static constexpr int scratch_bytes = 2 * stage_halves * 2;
  static constexpr unsigned min_blocks = m_tiles == 2 ? 2 : 3;
  static_assert(query_rows * ld <= stage_halves, "the Q tile is staged in the second stage");
  static_assert(scratch_bytes <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
};

// Tiles of the backward passes at head_dim D (64 or 128), rows padded by 16 bytes.
// dq pass: 64 query rows per team (4 warps x 16), 32-row K/V tiles in two stages (Q and dO pass
// through them first, then out's tile when the pass computes D_t): its registers hold Q, dO, dQ
// and two score tiles; 64-key tiles spilled at d = 64's 168-register cap (3 teams per
// multiprocessor). d = 128 doubles Q's, dO's and dQ's registers (about 160 live): 2 teams at
// the 255 cap.
// dkdv pass: each warp owns 16 key rows (their dK, dV in registers), the team's K and V tiles
// resident, query tiles of Q, dO, L and D streamed. d = 64: 4 warps (64 keys), 64-query tiles
// (36.5 KiB), 3 teams. d = 128: dK and dV alone are 128 registers and four 64-row tiles of 136
// halves (68 KiB) are past the level-0 scratch, so 2 warps (32 keys) and 32-query tiles
// (34.3 KiB), at most 255 registers (4 teams of 64 threads).
template <int D>
struct MmaBackwardTiles {
  static_assert(D == 64 || D == 128, "tensor-core backward tiles exist for head_dim 64 and 128");
  static constexpr int rows = 64;
  static constexpr int dq_key_rows = 32;
  static constexpr int ld = D + 8;
  static constexpr int tile_halves = rows * ld;
  static constexpr int dq_scratch_bytes = 4 * dq_key_rows * ld * 2;
  static constexpr unsigned dq_min_blocks = D <= 64 ? 3 : 2;
  static_assert(2 * tile_halves <= 4 * dq_key_rows * ld, "Q and dO fit the dq pass's stages");
  static constexpr int key_warps = D <= 64 ? 4 : 2;
  static constexpr int key_rows = 16 * key_warps;             // keys per dkdv team
  static constexpr int key_pass_queries = D <= 64 ? 64 : 32;  // query tile of the dkdv pass
  static constexpr int dkdv_scratch_bytes =
      2 * (key_rows + key_pass_queries) * ld * 2 + 2 * key_pass_queries * 4;
  static constexpr unsigned dkdv_min_blocks = D <= 64 ? 3 : 4;
  static_assert(key_pass_queries <= 32 * key_warps, "a thread per query loads L and D");
  static_assert(dkdv_scratch_bytes <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
  // The Original's rows pass (the dq pass storing P~Z and dS): each warp stages its 16 x
  // dq_key_rows tiles of both in rows of store_ld halves (16 bytes of padding: conflict-free
  // fragment writes) before writing them out a whole row at a time. d = 64 only: at 128 the
  // staging is past the level-0 scratch (the Original takes cuBLAS there).
  static constexpr int store_ld = dq_key_rows + 8;
  static constexpr int dq_store_scratch_bytes = dq_scratch_bytes + 4 * 2 * 16 * store_ld * 2;
  static_assert(D != 64 || dq_store_scratch_bytes <= 40 * 1024,
                "beyond Kokkos' level-0 team scratch");
};

// 64 query rows (one warpgroup), 64-key tiles, two stages of K and V after the Q tile; every
// tile 8 KiB at a 1024-byte boundary (the swizzle's period). 40 KiB + alignment fits the
// 48 KiB a team may have beside Kokkos' reserve; four teams per multiprocessor (128 registers,
// no spills; three teams at 170 registers measured 4-5 % slower).
struct WgmmaForwardTiles {
  static constexpr int d = 64;
  static constexpr int query_rows = 64;
  static constexpr int key_rows = 64;
  static constexpr int tile_halves = 64 * 64;
  static constexpr int scratch_bytes = 5 * tile_halves * 2;  // Q, then K and V of two stages
  static constexpr int align = 1024;
  static constexpr unsigned min_blocks = 4;
};

// The Improved backward on wgmma (sm_90a, head_dim 64): one warpgroup per team, 64 rows (query
// rows in the dq pass, key rows in the dk/dv pass); the pass's own two 64 x 64 tiles (Q and dO,
// or K and V) and one stage of the streamed pair (K and V, or Q and dO), every tile 8 KiB at a
// 1024-byte boundary, then L and D of the streamed query tile (dk/dv pass): 32.5 KiB + alignment.
// Registers: dq pass S, dP and dQ (32 floats each per thread), 4 teams per multiprocessor (128
// registers); dk/dv pass S^T, dP^T, dK and dV, 3 teams (168 registers).
struct WgmmaBackwardTiles {
  static constexpr int d = 64;
  static constexpr int rows = 64;
  static constexpr int tile_halves = 64 * 64;
  static constexpr int scratch_bytes = 4 * tile_halves * 2 + 2 * rows * 4;
  static constexpr int align = 1024;
  static constexpr unsigned dq_min_blocks = 4;
  static constexpr unsigned dkdv_min_blocks = 3;
  static_assert(scratch_bytes + align <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
};

// The Original algorithm's tensor-core forward at head_dim D (64 or 128): a team of 4 warps owns
// 64 query rows (16 per warp) and makes two passes over the segment's keys in 64-key tiles, the
// first with K tiles (scores into the workspace), the second with V tiles (P V); two stages of
// one tile each, the Q tile passing through the second first. One m-tile per warp keeps the
// registers near the cap of `min_blocks` teams per multiprocessor (128 at head_dim 64, with a
// few spills: 4.2 MB of local stores in the 64K forward on the H100), and a team's score rows (64 x
// kept positions, 2 bytes each) small enough that the workspace of all resident teams stays in
// the hundreds of MiB at the segment lengths.
template <int D>
struct OriginalMmaForwardTiles {
  static constexpr int query_rows = 64;
  static constexpr int key_rows = 64;
  static constexpr int ld = D + 8;  // halves per scratch row: 16 bytes of padding, no conflicts
  static constexpr int stage_halves = key_rows * ld;
  static constexpr int scratch_bytes = 2 * stage_halves * 2;
  static constexpr unsigned min_blocks = D <= 64 ? 4 : 3;
  // Workspace of one team per key tile: the 64 x 64 scores (2 bytes each) and the offset each
  // row's scores were stored relative to (a float per row).
  static constexpr int tile_score_bytes = query_rows * key_rows * 2;
  static constexpr int tile_offset_bytes = query_rows * 4;
  static_assert(query_rows * ld <= stage_halves, "the Q tile is staged in the second stage");
  static_assert(scratch_bytes <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
};

// The Original algorithm's tensor-core backward at head_dim D (64): its rows pass is the
// Improved dq pass (MmaBackwardTiles) storing what it computes; its keys pass gives each of 4
// warps 16 key rows of a 64-key tile and streams 64-query tiles of Q, dO and of the two stored
// matrices (4 x 9 KiB). Two products per tile instead of the Improved dk/dv pass's four: 4 teams
// per multiprocessor at 128 registers (a few spills: 0.5 MB of local stores per chunk of the 64K
// backward on the H100).
template <int D>
struct OriginalMmaBackwardTiles {
  static constexpr int rows = 64;
  static constexpr int ld = D + 8;
  static constexpr int tile_halves = rows * ld;
  static constexpr int scratch_bytes = 4 * tile_halves * 2;
  static constexpr unsigned keys_min_blocks = 4;
  static_assert(scratch_bytes <= 40 * 1024, "beyond Kokkos' level-0 team scratch");
};

}  // namespace dilated

#endif  // DILATED_TENSOR_CORE_TILE_POLICIES_HPP
