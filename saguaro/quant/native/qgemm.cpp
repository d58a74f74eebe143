// Weight-only quantized matmuls for CPU decoding: y = x · Wᵀ with W as 4-, 6- or 8-bit codes.
//
// Decoding streams every weight once per token, so the time is the bytes read. Weights stay
// compact (codes plus an fp16 scale and min per block of 32), and the activations are rounded
// per row and block of 32 to int8 (d = max|x| / 127), so each block's dot product is an
// unsigned-by-signed byte dot product in integers, scaled once into an fp32 sum:
//     Σ w·x = d_x · (scale · Σ q·x_q + min · Σ x_q),  w = scale · q + min.
// Int8 weights are stored as q + 128 with min = -128 · scale, the same form.
// Int6 (a GGUF Q6_K tensor as it is): w = scale · (q − 32), q in 0..63, with a scale per half
// block (16 codes), so Σ w·x = d_x · Σ_halves scale · (Σ q·x_q − 32 · Σ x_q), all in integers but
// for the scales.
//
// Layout: output rows in groups of 16, interleaved so that 32-bit lane j of every 64-byte vector
// holds 4 consecutive codes of row j. Each block of 32 columns of a group is one stretch of bytes:
// 8 vectors of codes (vector v: columns 4v..4v+3 of each row), packed to the code width, then the
// 16 rows' fp16 scales and their 16 mins (int6: the scales of the first halves, then of the second
// halves). A VNNI byte dot product of a code vector with 4 activation codes broadcast to every lane
// adds 4 products into each row's own lane, so one register holds the 16 rows' block sums, and
// every activation row a tile computes reuses the same unpacked codes; a tile of T activation rows
// costs T products per vector and reads no activation vector, only 4-byte broadcasts.
// Int4: byte 4j + r of packed vector v (0-3) holds code vector v's byte in its low nibble and code
// vector v + 4's in its high nibble. Int6: the int4 layout of the low 4 bits (256 bytes), then two
// vectors of high 2-bit pairs: bits 2p..2p+1 of byte b of vector h hold the high bits of byte b of
// code vector 4h + p. The weights of a call are one stream, group after group.
//
// Each output value depends only on its own activation row and is computed by the same
// instruction sequence whatever the batch: a K + 1 token verify sees the logits of one-token
// decodes, bit for bit. (Built with -ffp-contract=off; sums are in a fixed order.)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define SAGUARO_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define SAGUARO_AVX2 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#define SAGUARO_NEON 1
#include <arm_neon.h>
#endif

namespace {

constexpr int64_t kBlock = 32;  // weights (and activations) sharing one scale
constexpr int64_t kRows = 16;   // weight rows interleaved in every vector
constexpr int64_t kVectors = 8; // 64-byte vectors of 8-bit codes per block of a group
constexpr int64_t kTile = 4;    // activation rows sharing each load of weights

// Bytes of a group's block: codes at `Bits` a weight, then 16 fp16 scales and 16 fp16 mins.
template <int Bits>
constexpr int64_t code_bytes() { return kRows * kBlock * Bits / 8; }
template <int Bits>
constexpr int64_t block_bytes() { return code_bytes<Bits>() + 2 * kRows * 2; }

// The activations, quantized: x[m, b·32 + e] ≈ d[m, b] · q[m, b·32 + e].
struct Acts {
  const int8_t* q;  // [M, nb · 32]
  const float* d;   // [M, nb]
  const float* s;   // [M, nb], d · Σ q over the block
  const int32_t* h; // [M, nb, 2], Σ q over codes 0-15 of the block, then over 16-31
  int64_t nb;
};

// A weight matrix: `groups` groups of 16 rows (the last padded with zero rows), each nb blocks.
struct Weights {
  const uint8_t* packed;  // [groups, nb · block_bytes]
  int64_t nb, groups, rows;
};

// Where group g's blocks start (g = groups: the end of the matrix).
template <int Bits>
inline const uint8_t* group_start(const Weights& w, int64_t g) { return w.packed + g * w.nb * block_bytes<Bits>(); }

// Each block asks for the weights about kAheadBytes further on in the stream, into L2
// (prefetcht1). Left to the hardware prefetcher alone, a core had too few reads in flight while it
// computed, and a block's arithmetic and its stream added up instead of overlapping. 8-64 KB did
// about as well; prefetcht0 was slower than none (it fills L1 with what is not yet read).
constexpr int64_t kAheadBytes = 16 << 10;

// A prefetch the compiler keeps: GCC 12 emitted no __builtin_prefetch calls here.
inline void prefetch_l2(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

template <int Bits>
inline void prefetch_ahead(const uint8_t* block, const uint8_t* end) {
  const uint8_t* p = block + kAheadBytes;
  if (p + block_bytes<Bits>() > end) return;
  for (int64_t b = 0; b < block_bytes<Bits>(); b += 64) prefetch_l2(p + b);
}

// 32 activations → int8 codes round(x · 127 / max|x|) (to nearest even, as the scalar loop),
// their max |x| and the codes' sums over each half.
inline void quantize_block(const float* x, int8_t* codes, float& amax, int32_t& first_half, int32_t& second_half) {
#if SAGUARO_AVX512
  const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
  amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)), qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtsepi32_epi8(qlo));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16), _mm512_cvtsepi32_epi8(qhi));
  first_half = _mm512_reduce_add_epi32(qlo);
  second_half = _mm512_reduce_add_epi32(qhi);
#else
  amax = 0.f;
  for (int64_t e = 0; e < kBlock; ++e) amax = std::max(amax, std::fabs(x[e]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  first_half = second_half = 0;
  for (int64_t e = 0; e < kBlock; ++e) {
    const int32_t v = static_cast<int32_t>(std::nearbyint(x[e] * inv));
    codes[e] = static_cast<int8_t>(v);
    (e < kBlock / 2 ? first_half : second_half) += v;
  }
#endif
}

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t nb, int8_t* q, float* d, float* s, int32_t* h) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t at = r * nb + b;
        alignas(64) float xb[kBlock];
        for (int64_t e = 0; e < kBlock; ++e) xb[e] = static_cast<float>(x[at * kBlock + e]);
        float amax;
        quantize_block(xb, q + at * kBlock, amax, h[2 * at], h[2 * at + 1]);
        d[at] = amax / 127.f;
        s[at] = d[at] * static_cast<float>(h[2 * at] + h[2 * at + 1]);
      }
    }
  });
}

#if SAGUARO_AVX512

// The 4-byte groups of one block of activation codes, each to be broadcast to every lane.
inline void activation_words(const int8_t* x, int32_t* words) { std::memcpy(words, x, kBlock); }

// A block's 8 vectors of codes (vector v: columns 4v..4v+3). Int4 high nibbles stay in place
// (16 × the code): the caller shifts their sums back, which is exact.
template <int Bits>
inline void load_codes(const uint8_t* w, __m512i* v) {
  if constexpr (Bits == 8) {
    for (int i = 0; i < kVectors; ++i) v[i] = _mm512_loadu_si512(w + 64 * i);
  } else if constexpr (Bits == 6) {
    const __m512i nibble = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(0x30);
    for (int i = 0; i < kVectors / 2; ++i) {
      const __m512i packed = _mm512_loadu_si512(w + 64 * i);
      v[i] = _mm512_and_si512(packed, nibble);
      v[i + kVectors / 2] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    }
    for (int h = 0; h < 2; ++h) {
      const __m512i pairs = _mm512_loadu_si512(w + 256 + 64 * h);
      // Pair p sits at bits 2p: move it to bits 4-5 (16-bit shifts; the mask drops what crossed bytes).
      v[4 * h + 0] = _mm512_or_si512(v[4 * h + 0], _mm512_and_si512(_mm512_slli_epi16(pairs, 4), high));
      v[4 * h + 1] = _mm512_or_si512(v[4 * h + 1], _mm512_and_si512(_mm512_slli_epi16(pairs, 2), high));
      v[4 * h + 2] = _mm512_or_si512(v[4 * h + 2], _mm512_and_si512(pairs, high));
      v[4 * h + 3] = _mm512_or_si512(v[4 * h + 3], _mm512_and_si512(_mm512_srli_epi16(pairs, 2), high));
    }
  } else {
    for (int i = 0; i < kVectors / 2; ++i) {
      const __m512i packed = _mm512_loadu_si512(w + 64 * i);
      v[i] = _mm512_and_si512(packed, _mm512_set1_epi8(0x0F));
      v[i + kVectors / 2] = _mm512_and_si512(packed, _mm512_set1_epi8(static_cast<char>(0xF0)));
    }
  }
}

// Group g's 16 rows for activation rows [m0, m0 + T): out[t · 16 + j] = row 16g + j.
template <int Bits, int T>
void tile(const Weights& w, const Acts& a, int64_t m0, int64_t g, float* out) {
  const uint8_t* wg = group_start<Bits>(w, g);
  const uint8_t* end = group_start<Bits>(w, w.groups);
  __m512 acc[T], accm[T];
  for (int t = 0; t < T; ++t) acc[t] = accm[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.nb; ++b) {
    const uint8_t* wb = wg + b * block_bytes<Bits>();
    prefetch_ahead<Bits>(wb, end);
    __m512i v[kVectors];
    load_codes<Bits>(wb, v);
    const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + code_bytes<Bits>())));
    const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + code_bytes<Bits>() + 32)));
    for (int t = 0; t < T; ++t) {
      const int64_t at = (m0 + t) * a.nb + b;
      int32_t x[kVectors];
      activation_words(a.q + at * kBlock, x);
      __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
      for (int i = 0; i < kVectors / 2; ++i) {
        lo = _mm512_dpbusd_epi32(lo, v[i], _mm512_set1_epi32(x[i]));
        hi = _mm512_dpbusd_epi32(hi, v[i + kVectors / 2], _mm512_set1_epi32(x[i + kVectors / 2]));
      }
      const __m512 dx = _mm512_set1_ps(a.d[at]);
      if constexpr (Bits == 6) {  // sc, mn: the scales of the first and of the second halves
        lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(a.h[2 * at] << 5));
        hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(a.h[2 * at + 1] << 5));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(sc, dx), acc[t]);
        accm[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(mn, dx), accm[t]);
      } else {
        const __m512i dots = _mm512_add_epi32(lo, Bits == 4 ? _mm512_srai_epi32(hi, 4) : hi);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(sc, dx), acc[t]);
        accm[t] = _mm512_fmadd_ps(mn, _mm512_set1_ps(a.s[at]), accm[t]);
      }
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * kRows, _mm512_add_ps(acc[t], accm[t]));
}

#elif SAGUARO_AVX2

// Code vector i (columns 4i..4i+3) of rows 8·part..8·part+7 of a block, at its true values.
template <int Bits>
inline __m256i code_vector(const uint8_t* w, int part, int i) {
  const auto at = [&](int64_t offset) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + offset + 32 * part));
  };
  if constexpr (Bits == 8) return at(64 * i);
  const __m256i packed = at(64 * (i % 4));
  __m256i v = _mm256_and_si256(i < 4 ? packed : _mm256_srli_epi16(packed, 4), _mm256_set1_epi8(0x0F));
  if constexpr (Bits == 6) {
    // Pair p = i % 4 sits at bits 2p: move it to bits 4-5 (16-bit shifts; the mask drops what crossed bytes).
    const __m256i pairs = at(256 + 64 * (i / 4));
    const int p = i % 4;
    const __m256i top = p == 0 ? _mm256_slli_epi16(pairs, 4) : p == 1 ? _mm256_slli_epi16(pairs, 2)
                        : p == 2 ? pairs : _mm256_srli_epi16(pairs, 2);
    v = _mm256_or_si256(v, _mm256_and_si256(top, _mm256_set1_epi8(0x30)));
  }
  return v;
}

// Activation codes 4i..4i+3 of a block, broadcast to every lane.
inline __m256i activation_word(const int8_t* x, int i) {
  int32_t word;
  std::memcpy(&word, x + 4 * i, 4);
  return _mm256_set1_epi32(word);
}

// An opaque step that keeps a running sum in a register: GCC otherwise reassociates a chain of
// integer adds, computes all the products first and spills most of them to the stack.
inline void in_register(__m256i& v) { asm("" : "+x"(v)); }

// Sums a block's products keeps apart: int6 scales each half (codes 0-15, 16-31) on its own.
template <int Bits>
constexpr int kHalves = Bits == 6 ? 2 : 1;

// Calls finish(part, dots) with dots[t · halves + h] = Σ code · x over half h of the block for
// activation row x[t], rows 8·part..8·part+7 in their 32-bit lanes (int8: the stored codes,
// q + 128): exact integer sums.
//
// Int4 and int8 take both parts' codes for each broadcast activation word; int6, which keeps two
// sums per row, takes one part at a time (and finishes it) so that its sums stay in registers.
//
// Without AVX-VNNI, maddubs adds pairs of u8 · s8 products into int16 and madd pairs of those into
// the lane's int32. A pair stays under 2 · 127 · the largest code, so several maddubs results add
// up in int16 before one madd: 8 for int4 (≤ 30,480), 2 for int6 (≤ 32,004). Int8 codes reach
// 255, where maddubs would saturate: it multiplies |q − 128| by x with q's sign, and the caller
// adds back 128 · Σ x once per block.
template <int Bits, int T, typename Finish>
inline void block_dots(const uint8_t* wb, const int8_t* const* x, Finish&& finish) {
#if !defined(__AVXVNNI__)
  const __m256i ones = _mm256_set1_epi16(1);  // madd's other operand: adds int16 pairs into int32
#endif
  if constexpr (Bits == 6) {
    for (int part = 0; part < 2; ++part) {
      __m256i dots[2 * T];
      for (int i = 0; i < 2 * T; ++i) dots[i] = _mm256_setzero_si256();
#if defined(__AVXVNNI__)
#pragma GCC unroll 8  // int6 indexes its sums by half: fixed indices keep them in registers
      for (int i = 0; i < kVectors; ++i) {
        const __m256i v = code_vector<Bits>(wb, part, i);
        for (int t = 0; t < T; ++t) {
          dots[2 * t + i / 4] = _mm256_dpbusd_avx_epi32(dots[2 * t + i / 4], v, activation_word(x[t], i));
        }
      }
#else
#pragma GCC unroll 8
      for (int r = 0; r < kVectors; r += 2) {
        __m256i pairs[T];
        for (int t = 0; t < T; ++t) pairs[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int i = r; i < r + 2; ++i) {
          const __m256i v = code_vector<Bits>(wb, part, i);
          for (int t = 0; t < T; ++t) pairs[t] = _mm256_add_epi16(pairs[t], _mm256_maddubs_epi16(v, activation_word(x[t], i)));
          for (int t = 0; t < T; ++t) in_register(pairs[t]);
        }
        for (int t = 0; t < T; ++t) {
          dots[2 * t + r / 4] = _mm256_add_epi32(dots[2 * t + r / 4], _mm256_madd_epi16(pairs[t], ones));
          in_register(dots[2 * t + r / 4]);
        }
      }
#endif
      finish(part, dots);
      // The next part broadcasts the same activation words: reloading them is cheaper than the
      // 8 · T registers GCC otherwise spills to keep them.
      asm volatile("" ::: "memory");
    }
  } else {
    __m256i dots[2][T];
    for (int t = 0; t < T; ++t) dots[0][t] = dots[1][t] = _mm256_setzero_si256();
#if defined(__AVXVNNI__)
    for (int i = 0; i < kVectors; ++i) {
      const __m256i v[2] = {code_vector<Bits>(wb, 0, i), code_vector<Bits>(wb, 1, i)};
      for (int t = 0; t < T; ++t) {
        const __m256i word = activation_word(x[t], i);
        for (int part = 0; part < 2; ++part) dots[part][t] = _mm256_dpbusd_avx_epi32(dots[part][t], v[part], word);
      }
    }
#else
    if constexpr (Bits == 8) {
#pragma GCC unroll 8
      for (int i = 0; i < kVectors; ++i) {
        __m256i q[2], size[2];
        for (int part = 0; part < 2; ++part) {
          q[part] = _mm256_xor_si256(code_vector<Bits>(wb, part, i), _mm256_set1_epi8(static_cast<char>(0x80)));
          size[part] = _mm256_abs_epi8(q[part]);
        }
        for (int t = 0; t < T; ++t) {
          const __m256i word = activation_word(x[t], i);
          for (int part = 0; part < 2; ++part) {
            const __m256i pairs = _mm256_maddubs_epi16(size[part], _mm256_sign_epi8(word, q[part]));
            dots[part][t] = _mm256_add_epi32(dots[part][t], _mm256_madd_epi16(pairs, ones));
          }
        }
        for (int t = 0; t < T; ++t) {
          for (int part = 0; part < 2; ++part) in_register(dots[part][t]);
        }
      }
    } else {
      __m256i pairs[2][T];
      for (int t = 0; t < T; ++t) pairs[0][t] = pairs[1][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int i = 0; i < kVectors; ++i) {
        const __m256i v[2] = {code_vector<Bits>(wb, 0, i), code_vector<Bits>(wb, 1, i)};
        for (int t = 0; t < T; ++t) {
          const __m256i word = activation_word(x[t], i);
          for (int part = 0; part < 2; ++part) pairs[part][t] = _mm256_add_epi16(pairs[part][t], _mm256_maddubs_epi16(v[part], word));
        }
        for (int t = 0; t < T; ++t) {
          for (int part = 0; part < 2; ++part) in_register(pairs[part][t]);
        }
      }
      for (int part = 0; part < 2; ++part) {
        for (int t = 0; t < T; ++t) dots[part][t] = _mm256_madd_epi16(pairs[part][t], ones);
      }
    }
#endif
    finish(0, dots[0]);
    finish(1, dots[1]);
  }
}

// As the AVX-512 tile, 8 rows at a time (rows 0-7 and 8-15 of each block), with one running
// sum per row (the min term added right after the block's product term).
template <int Bits, int T>
void tile(const Weights& w, const Acts& a, int64_t m0, int64_t g, float* out) {
  const uint8_t* wg = group_start<Bits>(w, g);
  const uint8_t* end = group_start<Bits>(w, w.groups);
  __m256 acc[2][T];
  for (int part = 0; part < 2; ++part) {
    for (int t = 0; t < T; ++t) acc[part][t] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < w.nb; ++b) {
    const uint8_t* wb = wg + b * block_bytes<Bits>();
    prefetch_ahead<Bits>(wb, end);
    const int8_t* x[T];
    for (int t = 0; t < T; ++t) x[t] = a.q + ((m0 + t) * a.nb + b) * kBlock;
    block_dots<Bits, T>(wb, x, [&](int part, const __m256i* dots) {
      const at::Half* sm = reinterpret_cast<const at::Half*>(wb + code_bytes<Bits>()) + 8 * part;
      const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sm)));
      const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sm + kRows)));
      for (int t = 0; t < T; ++t) {
        const int64_t at = (m0 + t) * a.nb + b;
        const __m256 dx = _mm256_set1_ps(a.d[at]);
        __m256& sum = acc[part][t];
        if constexpr (Bits == 6) {  // sc, mn: the scales of the first and of the second halves
          const __m256i lo = _mm256_sub_epi32(dots[2 * t], _mm256_set1_epi32(a.h[2 * at] << 5));
          const __m256i hi = _mm256_sub_epi32(dots[2 * t + 1], _mm256_set1_epi32(a.h[2 * at + 1] << 5));
          sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(sc, dx), sum);
          sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(mn, dx), sum);
        } else {
          __m256i dot = dots[t];
#if !defined(__AVXVNNI__)
          if constexpr (Bits == 8) dot = _mm256_add_epi32(dot, _mm256_set1_epi32((a.h[2 * at] + a.h[2 * at + 1]) << 7));
#endif
          sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(sc, dx), sum);
          sum = _mm256_fmadd_ps(mn, _mm256_set1_ps(a.s[at]), sum);
        }
      }
    });
  }
  for (int part = 0; part < 2; ++part) {
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + t * kRows + 8 * part, acc[part][t]);
  }
}

#elif SAGUARO_NEON

// Code vector v (columns 4v..4v+3) of rows 4·quad..4·quad+3 of a block as signed bytes: the codes
// at their true values (int8: the stored q + 128 less 128; the caller adds 128 · Σ x back).
template <int Bits>
inline int8x16_t code_quad(const uint8_t* w, int quad, int v) {
  const uint8_t* at = w + 16 * quad;
  if constexpr (Bits == 8) return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(at + 64 * v), vdupq_n_u8(0x80)));
  const uint8x16_t packed = vld1q_u8(at + 64 * (v % 4));
  uint8x16_t codes = v < 4 ? vandq_u8(packed, vdupq_n_u8(0x0F)) : vshrq_n_u8(packed, 4);
  if constexpr (Bits == 6) {
    // Pair p = v % 4 sits at bits 2p: move it to bits 4-5.
    const uint8x16_t pairs = vld1q_u8(at + 256 + 64 * (v / 4));
    const uint8x16_t top = v % 4 == 0 ? vshlq_n_u8(pairs, 4) : v % 4 == 1 ? vshlq_n_u8(pairs, 2)
                           : v % 4 == 2 ? pairs : vshrq_n_u8(pairs, 2);
    codes = vorrq_u8(codes, vandq_u8(top, vdupq_n_u8(0x30)));
  }
  return vreinterpretq_s8_u8(codes);
}

// As the AVX-512 tile, 4 rows at a time: a dot product instruction (sdot) adds the 4 products of
// a row's 4 codes and 4 activation codes into the row's lane, the activation word picked by lane.
template <int Bits, int T>
void tile(const Weights& w, const Acts& a, int64_t m0, int64_t g, float* out) {
  const uint8_t* wg = group_start<Bits>(w, g);
  const uint8_t* end = group_start<Bits>(w, w.groups);
  float32x4_t acc[T][4], accm[T][4];
  for (int t = 0; t < T; ++t) {
    for (int quad = 0; quad < 4; ++quad) acc[t][quad] = accm[t][quad] = vdupq_n_f32(0.f);
  }
  for (int64_t b = 0; b < w.nb; ++b) {
    const uint8_t* wb = wg + b * block_bytes<Bits>();
    prefetch_ahead<Bits>(wb, end);
    int8x16_t x[T][2];  // activation codes 0-15 and 16-31 of the block
    for (int t = 0; t < T; ++t) {
      const int8_t* xq = a.q + ((m0 + t) * a.nb + b) * kBlock;
      x[t][0] = vld1q_s8(xq);
      x[t][1] = vld1q_s8(xq + 16);
    }
    const float16_t* sm = reinterpret_cast<const float16_t*>(wb + code_bytes<Bits>());
    for (int quad = 0; quad < 4; ++quad) {
      int8x16_t c[kVectors];
      for (int v = 0; v < kVectors; ++v) c[v] = code_quad<Bits>(wb, quad, v);
      const float32x4_t sc = vcvt_f32_f16(vld1_f16(sm + 4 * quad));
      const float32x4_t mn = vcvt_f32_f16(vld1_f16(sm + kRows + 4 * quad));
      for (int t = 0; t < T; ++t) {
        int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);  // codes 0-15, 16-31
        lo = vdotq_laneq_s32(lo, c[0], x[t][0], 0);
        lo = vdotq_laneq_s32(lo, c[1], x[t][0], 1);
        lo = vdotq_laneq_s32(lo, c[2], x[t][0], 2);
        lo = vdotq_laneq_s32(lo, c[3], x[t][0], 3);
        hi = vdotq_laneq_s32(hi, c[4], x[t][1], 0);
        hi = vdotq_laneq_s32(hi, c[5], x[t][1], 1);
        hi = vdotq_laneq_s32(hi, c[6], x[t][1], 2);
        hi = vdotq_laneq_s32(hi, c[7], x[t][1], 3);
        const int64_t at = (m0 + t) * a.nb + b;
        const float32x4_t dx = vdupq_n_f32(a.d[at]);
        if constexpr (Bits == 6) {  // sc, mn: the scales of the first and of the second halves
          lo = vsubq_s32(lo, vdupq_n_s32(a.h[2 * at] << 5));
          hi = vsubq_s32(hi, vdupq_n_s32(a.h[2 * at + 1] << 5));
          acc[t][quad] = vfmaq_f32(acc[t][quad], vcvtq_f32_s32(lo), vmulq_f32(sc, dx));
          accm[t][quad] = vfmaq_f32(accm[t][quad], vcvtq_f32_s32(hi), vmulq_f32(mn, dx));
        } else {
          int32x4_t dots = vaddq_s32(lo, hi);
          if constexpr (Bits == 8) dots = vaddq_s32(dots, vdupq_n_s32((a.h[2 * at] + a.h[2 * at + 1]) << 7));
          acc[t][quad] = vfmaq_f32(acc[t][quad], vcvtq_f32_s32(dots), vmulq_f32(sc, dx));
          accm[t][quad] = vfmaq_f32(accm[t][quad], mn, vdupq_n_f32(a.s[at]));
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int quad = 0; quad < 4; ++quad) vst1q_f32(out + t * kRows + 4 * quad, vaddq_f32(acc[t][quad], accm[t][quad]));
  }
}

#else  // portable: any CPU the compiler targets

// Code e (0-31) of row j in a block of a group, at its true value.
template <int Bits>
inline int32_t code_at(const uint8_t* w, int64_t j, int64_t e) {
  const int64_t v = e / 4, at = 4 * j + e % 4;
  if constexpr (Bits == 8) return w[64 * v + at];
  int32_t q = (w[64 * (v % 4) + at] >> (v < 4 ? 0 : 4)) & 0x0F;
  if constexpr (Bits == 6) q |= ((w[256 + 64 * (v / 4) + at] >> (2 * (v % 4))) & 0x03) << 4;
  return q;
}

template <int Bits, int T>
void tile(const Weights& w, const Acts& a, int64_t m0, int64_t g, float* out) {
  const uint8_t* wg = group_start<Bits>(w, g);
  for (int t = 0; t < T; ++t) {
    for (int64_t j = 0; j < kRows; ++j) {
      float acc = 0.f, accm = 0.f;
      for (int64_t b = 0; b < w.nb; ++b) {
        const uint8_t* wb = wg + b * block_bytes<Bits>();
        const at::Half* sm = reinterpret_cast<const at::Half*>(wb + code_bytes<Bits>());
        const int64_t at = (m0 + t) * a.nb + b;
        const int8_t* x = a.q + at * kBlock;
        int32_t dots[2] = {0, 0};  // codes 0-15, 16-31
        for (int64_t e = 0; e < kBlock; ++e) dots[e / 16] += code_at<Bits>(wb, j, e) * x[e];
        const float dx = a.d[at];
        if constexpr (Bits == 6) {
          acc += static_cast<float>(sm[j]) * dx * static_cast<float>(dots[0] - (a.h[2 * at] << 5));
          accm += static_cast<float>(sm[kRows + j]) * dx * static_cast<float>(dots[1] - (a.h[2 * at + 1] << 5));
        } else {
          acc += static_cast<float>(sm[j]) * dx * static_cast<float>(dots[0] + dots[1]);
          accm += static_cast<float>(sm[kRows + j]) * a.s[at];
        }
      }
      out[t * kRows + j] = acc + accm;
    }
  }
}

#endif

// Group g's rows for every activation row, kTile rows at a time (after the first tile, the
// group's weights come from cache).
template <int Bits, typename O>
void group_rows(const Weights& w, const Acts& a, int64_t m, int64_t g, O* y) {
  alignas(64) float out[kTile * kRows];
  const int64_t rows = std::min(kRows, w.rows - g * kRows);
  for (int64_t m0 = 0; m0 < m; m0 += kTile) {
    const int64_t t = std::min(kTile, m - m0);
    switch (t) {
      case 1: tile<Bits, 1>(w, a, m0, g, out); break;
      case 2: tile<Bits, 2>(w, a, m0, g, out); break;
      case 3: tile<Bits, 3>(w, a, m0, g, out); break;
      default: tile<Bits, kTile>(w, a, m0, g, out);
    }
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t j = 0; j < rows; ++j) y[(m0 + i) * w.rows + g * kRows + j] = static_cast<O>(out[i * kRows + j]);
    }
  }
}

template <typename T>
void run(const at::Tensor& x, const Weights& w, int64_t bits, at::Tensor& y) {
  const int64_t m = x.size(0), nb = w.nb;
  at::Tensor q = at::empty({m, nb * kBlock}, at::kChar);
  at::Tensor d = at::empty({m, nb}, at::kFloat), s = at::empty({m, nb}, at::kFloat);
  at::Tensor h = at::empty({m, 2 * nb}, at::kInt);
  quantize_rows(x.data_ptr<T>(), m, nb, q.data_ptr<int8_t>(), d.data_ptr<float>(), s.data_ptr<float>(),
                h.data_ptr<int32_t>());
  const Acts a{q.data_ptr<int8_t>(), d.data_ptr<float>(), s.data_ptr<float>(), h.data_ptr<int32_t>(), nb};
  T* out = y.data_ptr<T>();
  at::parallel_for(0, w.groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (bits == 4) {
        group_rows<4>(w, a, m, g, out);
      } else if (bits == 6) {
        group_rows<6>(w, a, m, g, out);
      } else {
        group_rows<8>(w, a, m, g, out);
      }
    }
  });
}

int64_t packed_block_bytes(int64_t bits) {
  return bits == 4 ? block_bytes<4>() : bits == 6 ? block_bytes<6>() : block_bytes<8>();
}

// x [M, K] (float32 and bfloat16 read and written as they are, other dtypes through float32);
// packed [ceil(N / 16), K / 32 · block bytes] uint8 → [M, N] in x's dtype, each value rounded once
// from its float32 sum.
at::Tensor qgemm(const at::Tensor& x, const at::Tensor& packed, int64_t bits, int64_t n) {
  TORCH_CHECK(bits == 4 || bits == 6 || bits == 8, "qgemm: bits must be 4, 6 or 8, not ", bits);
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2, "qgemm: x and packed must be matrices");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous(), "qgemm: packed must be contiguous uint8");
  const bool direct = x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
  const at::Tensor xc = direct ? x.contiguous() : x.to(at::kFloat).contiguous();
  const int64_t m = xc.size(0), k = xc.size(1);
  TORCH_CHECK(k % kBlock == 0, "qgemm: the input size must be a multiple of 32, not ", k);
  const int64_t nb = k / kBlock;
  TORCH_CHECK(packed.size(0) == (n + kRows - 1) / kRows && packed.size(1) == nb * packed_block_bytes(bits),
              "qgemm: packed does not hold ", n, " rows of ", k, " inputs at ", bits, " bits");
  const Weights w{packed.data_ptr<uint8_t>(), nb, packed.size(0), n};
  at::Tensor y = at::empty({m, n}, xc.options());
  if (xc.scalar_type() == at::kBFloat16) {
    run<at::BFloat16>(xc, w, bits, y);
  } else {
    run<float>(xc, w, bits, y);
  }
  return direct ? y : y.to(x.scalar_type());
}

// Which vector path this build took, for logs and benchmarks.
std::string isa() {
#if SAGUARO_AVX512
  return "avx512-vnni";
#elif SAGUARO_AVX2 && defined(__AVXVNNI__)
  return "avx2-vnni";
#elif SAGUARO_AVX2
  return "avx2";
#elif SAGUARO_NEON
  return "neon-dotprod";
#else
  return "portable";
#endif
}

}  // namespace

TORCH_LIBRARY(saguaro_qgemm, m) {
  m.def("qgemm", &qgemm);
  m.def("isa", &isa);
}
