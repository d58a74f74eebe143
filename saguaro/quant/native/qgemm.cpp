// Weight-only quantized matmuls for CPU decoding: y = x · Wᵀ with W as 4- or 8-bit codes.
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
// Layout: a row's blocks come in chunks of 16 (zero-padded at the end), interleaved so that
// 32-bit lane j of every 64-byte vector holds 4 consecutive codes of block j. One VNNI byte
// dot product per vector then adds 4 products into each block's own lane, 8 vectors give the
// 16 blocks' sums in one register, and one conversion and one multiply-add per 16 blocks
// apply their scales. The activations are rearranged the same way when they are quantized.
// Int4: byte 4j + r of vector v (0-3) holds code 4v + r of block j in its low nibble and code
// 4(v + 4) + r in its high nibble. Int6: the int4 layout of the low 4 bits (256 bytes a chunk),
// then two vectors of high 2-bit pairs: bits 2r..2r+1 of byte b of vector h hold the high bits
// of byte b of code vector 4h + r.
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
#endif

namespace {

constexpr int64_t kBlock = 32;                 // weights (and activations) sharing one scale
constexpr int64_t kChunk = 16;                 // blocks interleaved together; their scales fill 32 bytes
constexpr int64_t kChunkCodes = kChunk * kBlock;
constexpr int64_t kVectors = kChunkCodes / 64;  // 64-byte vectors of 8-bit codes per chunk
constexpr int64_t kTile = 4;                   // activation rows sharing each load of weights
constexpr int64_t kRowStep = 8;                // weight rows that, with kGroup activation rows,
constexpr int64_t kGroup = 8;                  // pass over kSegment blocks together, all in L1:
constexpr int64_t kSegment = 4 * kChunk;       // 2,048 columns
constexpr int64_t kState = 32;                 // floats of running sums per output value

// The activations, quantized: x[m, b·32 + e] ≈ d[m, b] · q at the interleaved place of (b, e).
struct Acts {
  const int8_t* q;  // [M, nbp · 32]
  const float* d;   // [M, nbp], zero past the last block
  const float* s;   // [M, nbp], d · Σ q over the block
  const int32_t* h; // [M, 2 · nbp], per chunk Σ q over codes 0-15 of its 16 blocks, then over 16-31
  int64_t nbp;
};

// A weight matrix: row n's interleaved codes, and per chunk 16 fp16 scales then 16 fp16 mins
// (int6: the scales of the 16 first halves, then of the 16 second halves).
struct Weights {
  const uint8_t* codes;  // [N, nbp · 32 · bits / 8]
  const at::Half* sm;    // [N, 2 · nbp]
  int64_t row_bytes, nbp, rows;
};

// A tile asks for the weights it will read about kAheadBytes later, into L2 (prefetcht1): the
// same chunk of the row that many bytes on in its segment's stream. Left to the hardware
// prefetcher alone, a core had too few reads in flight while it computed, and a chunk's arithmetic
// and its stream added up instead of overlapping. Measured on a 256 MB stream of 1,536-column
// int4 rows, one thread: 1 activation row 16.5 -> 14.5 ns a chunk, 3 rows 25 -> 20 ns (two
// threads, 3 rows: 12.5 -> 10.5; 1 row about even). Distances of 8-64 KB did about as well;
// prefetcht0 at the same distance was slower than none (it fills L1 with what is not yet read).
constexpr int64_t kAheadBytes = 16 << 10;

// A prefetch the compiler keeps: GCC 12 emitted none of this file's __builtin_prefetch calls.
inline void prefetch_l2(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Rows from one row's chunk of segment [c0, c1) to the one about kAheadBytes further on.
template <int Bits>
inline int64_t rows_ahead(int64_t c0, int64_t c1) {
  const int64_t segment_bytes = (c1 - c0) / kChunk * (kChunkCodes * Bits / 8 + 2 * kChunk * sizeof(at::Half));
  return (kAheadBytes + segment_bytes - 1) / segment_bytes;
}

template <int Bits>
inline void prefetch_ahead(const Weights& w, int64_t row, int64_t c) {
  constexpr int64_t chunk_bytes = kChunkCodes * Bits / 8;
  if (row >= w.rows) return;
  const char* codes = reinterpret_cast<const char*>(w.codes + row * w.row_bytes + c / kChunk * chunk_bytes);
  for (int64_t b = 0; b < chunk_bytes; b += 64) prefetch_l2(codes + b);
  prefetch_l2(w.sm + row * 2 * w.nbp + 2 * c);
}

// Where code e of block b sits in its row's interleaved (8-bit) layout.
inline int64_t interleaved(int64_t b, int64_t e) {
  return b / kChunk * kChunkCodes + e / 4 * 64 + b % kChunk * 4 + e % 4;
}

// 32 activations → int8 codes round(x · 127 / max|x|) (to nearest even, as the scalar loop),
// their max |x| and the codes' sum.
inline void quantize_block(const float* x, int8_t* codes, float& amax, int32_t& sum, int32_t& first_half) {
#if SAGUARO_AVX512
  const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
  amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)), qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
  _mm_store_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtsepi32_epi8(qlo));
  _mm_store_si128(reinterpret_cast<__m128i*>(codes + 16), _mm512_cvtsepi32_epi8(qhi));
  first_half = _mm512_reduce_add_epi32(qlo);
  sum = first_half + _mm512_reduce_add_epi32(qhi);
#else
  amax = 0.f;
  for (int64_t e = 0; e < kBlock; ++e) amax = std::max(amax, std::fabs(x[e]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  sum = first_half = 0;
  for (int64_t e = 0; e < kBlock; ++e) {
    const int32_t v = static_cast<int32_t>(std::nearbyint(x[e] * inv));
    codes[e] = static_cast<int8_t>(v);
    sum += v;
    if (e < kBlock / 2) first_half += v;
  }
#endif
}

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t k, int64_t nbp, int8_t* q, float* d, float* s, int32_t* h) {
  const int64_t nb = k / kBlock;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int8_t* qr = q + r * nbp * kBlock;
      for (int64_t b = 0; b < nbp; ++b) {
        float* db = d + r * nbp + b;
        float* sb = s + r * nbp + b;
        int32_t* hb = h + r * 2 * nbp + b / kChunk * 2 * kChunk + b % kChunk;
        if (b >= nb) {
          for (int64_t e = 0; e < kBlock; ++e) qr[interleaved(b, e)] = 0;
          *db = *sb = 0.f;
          hb[0] = hb[kChunk] = 0;
          continue;
        }
        alignas(64) float xb[kBlock];
        for (int64_t e = 0; e < kBlock; ++e) xb[e] = static_cast<float>(x[r * k + b * kBlock + e]);
        alignas(64) int8_t codes[kBlock];
        float amax;
        int32_t sum, first_half;
        quantize_block(xb, codes, amax, sum, first_half);
        for (int64_t e = 0; e < kBlock; e += 4) std::memcpy(qr + interleaved(b, e), codes + e, 4);
        *db = amax / 127.f;
        *sb = *db * static_cast<float>(sum);
        hb[0] = first_half;
        hb[kChunk] = sum - first_half;
      }
    }
  });
}

#if SAGUARO_AVX512

// The chunk's 8 vectors of codes. Int4 high nibbles stay in place (16 × the code): the caller
// shifts their sums back, which is exact.
template <int Bits>
inline void load_chunk(const uint8_t* w, __m512i* v) {
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
      // Pair r sits at bits 2r: move it to bits 4-5 (16-bit shifts; the mask drops what crossed bytes).
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

// Output rows [n0, n1) for activation rows [m0, m0 + T), blocks [c0, c1): adds to their running
// sums, kState floats each, `stride` floats from one output row to the next.
template <int Bits, int T>
void tile_rows(const Weights& w, const Acts& a, int64_t m0, int64_t n0, int64_t n1, int64_t c0, int64_t c1,
               float* sums, int64_t stride) {
  constexpr int64_t chunk_bytes = kChunkCodes * Bits / 8;
  const int64_t ahead = rows_ahead<Bits>(c0, c1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w.codes + n * w.row_bytes;
    const at::Half* smr = w.sm + n * 2 * w.nbp;
    float* sn = sums + (n - n0) * stride;
    __m512 acc[T], accm[T];
    for (int t = 0; t < T; ++t) {
      acc[t] = _mm512_loadu_ps(sn + t * kState);
      accm[t] = _mm512_loadu_ps(sn + t * kState + 16);
    }
    for (int64_t c = c0; c < c1; c += kChunk) {
      const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(smr + 2 * c)));
      const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(smr + 2 * c + kChunk)));
      prefetch_ahead<Bits>(w, n + ahead, c);
      __m512i v[kVectors];
      load_chunk<Bits>(wr + c / kChunk * chunk_bytes, v);
      for (int t = 0; t < T; ++t) {
        const int8_t* x = a.q + (m0 + t) * a.nbp * kBlock + c * kBlock;
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        for (int i = 0; i < kVectors / 2; ++i) {
          lo = _mm512_dpbusd_epi32(lo, v[i], _mm512_loadu_si512(x + 64 * i));
          hi = _mm512_dpbusd_epi32(hi, v[i + kVectors / 2], _mm512_loadu_si512(x + 64 * (i + kVectors / 2)));
        }
        const int64_t row = (m0 + t) * a.nbp + c;
        const __m512 dx = _mm512_loadu_ps(a.d + row);
        if constexpr (Bits == 6) {  // sc, mn: the scales of the first and of the second halves
          const int32_t* hs = a.h + (m0 + t) * 2 * a.nbp + 2 * c;
          lo = _mm512_sub_epi32(lo, _mm512_slli_epi32(_mm512_loadu_si512(hs), 5));
          hi = _mm512_sub_epi32(hi, _mm512_slli_epi32(_mm512_loadu_si512(hs + kChunk), 5));
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(sc, dx), acc[t]);
          accm[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(mn, dx), accm[t]);
        } else {
          const __m512i dots = _mm512_add_epi32(lo, Bits == 4 ? _mm512_srai_epi32(hi, 4) : hi);
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(sc, dx), acc[t]);
          accm[t] = _mm512_fmadd_ps(mn, _mm512_loadu_ps(a.s + row), accm[t]);
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      _mm512_storeu_ps(sn + t * kState, acc[t]);
      _mm512_storeu_ps(sn + t * kState + 16, accm[t]);
    }
  }
}

inline float finish(const float* s) { return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(s), _mm512_loadu_ps(s + 16))); }

#elif SAGUARO_AVX2

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Lane j: the 4 products of byte lane j of 8 blocks' codes (u8) and activations (s8).
template <int Bits>
inline __m256i lane_dot(__m256i w, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  // Codes up to 63: a pair of products stays inside maddubs' int16.
  if constexpr (Bits != 8) return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
  // Codes reach 255, where maddubs would saturate: multiply |q - 128| by x with q's sign, then
  // add back 128 · Σ x.
  const __m256i q = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q)), ones);
  const __m256i xsum = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), x), ones);
  return _mm256_add_epi32(dot, _mm256_slli_epi32(xsum, 7));
}

template <int Bits, int T>
void tile_rows(const Weights& w, const Acts& a, int64_t m0, int64_t n0, int64_t n1, int64_t c0, int64_t c1,
               float* sums, int64_t stride) {
  constexpr int64_t chunk_bytes = kChunkCodes * Bits / 8;
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const int64_t ahead = rows_ahead<Bits>(c0, c1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w.codes + n * w.row_bytes;
    const at::Half* smr = w.sm + n * 2 * w.nbp;
    float* sn = sums + (n - n0) * stride;
    __m256 acc[T], accm[T];
    for (int t = 0; t < T; ++t) {
      acc[t] = _mm256_loadu_ps(sn + t * kState);
      accm[t] = _mm256_loadu_ps(sn + t * kState + 16);
    }
    for (int64_t c = c0; c < c1; c += kChunk) {
      const uint8_t* wc = wr + c / kChunk * chunk_bytes;
      prefetch_ahead<Bits>(w, n + ahead, c);
      for (int half = 0; half < 2; ++half) {  // blocks 0-7, then 8-15 of the chunk
        const at::Half* line = smr + 2 * c + 8 * half;
        const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line)));
        const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line + kChunk)));
        for (int t = 0; t < T; ++t) {
          const int8_t* x = a.q + (m0 + t) * a.nbp * kBlock + c * kBlock + 32 * half;
          __m256i dots[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};  // codes 0-15, 16-31
          for (int i = 0; i < kVectors; ++i) {
            __m256i codes;
            if constexpr (Bits == 8) {
              codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc + 64 * i + 32 * half));
            } else {
              const __m256i packed = _mm256_loadu_si256(
                  reinterpret_cast<const __m256i*>(wc + 64 * (i % (kVectors / 2)) + 32 * half));
              codes = i < kVectors / 2 ? _mm256_and_si256(packed, nibble)
                                       : _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
            }
            if constexpr (Bits == 6) {
              const __m256i pairs = _mm256_loadu_si256(
                  reinterpret_cast<const __m256i*>(wc + 256 + 64 * (i / 4) + 32 * half));
              const __m256i top = _mm256_and_si256(_mm256_srli_epi16(pairs, 2 * (i % 4)), _mm256_set1_epi8(0x03));
              codes = _mm256_or_si256(codes, _mm256_slli_epi16(top, 4));
            }
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64 * i));
            const int part = Bits == 6 && i >= kVectors / 2;
            dots[part] = _mm256_add_epi32(dots[part], lane_dot<Bits>(codes, xv));
          }
          const int64_t row = (m0 + t) * a.nbp + c + 8 * half;
          const __m256 dx = _mm256_loadu_ps(a.d + row);
          if constexpr (Bits == 6) {  // sc, mn: the scales of the first and of the second halves
            const int32_t* hs = a.h + (m0 + t) * 2 * a.nbp + 2 * c + 8 * half;
            for (int p = 0; p < 2; ++p) {
              const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hs + p * kChunk));
              dots[p] = _mm256_sub_epi32(dots[p], _mm256_slli_epi32(sums, 5));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[0]), _mm256_mul_ps(sc, dx), acc[t]);
            accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[1]), _mm256_mul_ps(mn, dx), accm[t]);
          } else {
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[0]), _mm256_mul_ps(sc, dx), acc[t]);
            accm[t] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(a.s + row), accm[t]);
          }
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      _mm256_storeu_ps(sn + t * kState, acc[t]);
      _mm256_storeu_ps(sn + t * kState + 16, accm[t]);
    }
  }
}

inline float finish(const float* s) { return hsum(_mm256_add_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 16))); }

#else  // portable: any CPU the compiler targets

template <int Bits, int T>
void tile_rows(const Weights& w, const Acts& a, int64_t m0, int64_t n0, int64_t n1, int64_t c0, int64_t c1,
               float* sums, int64_t stride) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w.codes + n * w.row_bytes;
    const at::Half* smr = w.sm + n * 2 * w.nbp;
    for (int t = 0; t < T; ++t) {
      const int8_t* x = a.q + (m0 + t) * a.nbp * kBlock;
      const float* d = a.d + (m0 + t) * a.nbp;
      const float* s = a.s + (m0 + t) * a.nbp;
      float* sn = sums + (n - n0) * stride + t * kState;
      float acc = sn[0], accm = sn[16];
      for (int64_t b = c0; b < c1; ++b) {
        int32_t dot = 0;
        for (int64_t e = 0; e < kBlock; ++e) {
          const int64_t at8 = interleaved(b, e);
          int32_t q;
          if constexpr (Bits == 8) {
            q = wr[at8];
          } else {  // vectors 4-7 of a chunk are the high nibbles of vectors 0-3
            const int64_t vec = at8 % kChunkCodes / 64;
            const int64_t base = at8 / kChunkCodes * (kChunkCodes * Bits / 8);
            q = (wr[base + vec % (kVectors / 2) * 64 + at8 % 64] >> (vec < kVectors / 2 ? 0 : 4)) & 0x0F;
            if constexpr (Bits == 6) q |= ((wr[base + 256 + vec / 4 * 64 + at8 % 64] >> (2 * (vec % 4))) & 0x03) << 4;
          }
          if constexpr (Bits == 6) q -= 32;
          dot += q * x[at8];
          if (Bits == 6 && e == kBlock / 2 - 1) {  // the first half's own scale
            const int64_t line = b / kChunk * 2 * kChunk + b % kChunk;
            acc += static_cast<float>(smr[line]) * d[b] * static_cast<float>(dot);
            dot = 0;
          }
        }
        const int64_t line = b / kChunk * 2 * kChunk + b % kChunk;
        if constexpr (Bits == 6) {
          accm += static_cast<float>(smr[line + kChunk]) * d[b] * static_cast<float>(dot);
        } else {
          acc += static_cast<float>(smr[line]) * d[b] * static_cast<float>(dot);
          accm += static_cast<float>(smr[line + kChunk]) * s[b];
        }
      }
      sn[0] = acc;
      sn[16] = accm;
    }
  }
}

inline float finish(const float* s) { return s[0] + s[16]; }

#endif

// Output rows [n0, n1) (at most kRowStep) for every activation row. Each output value's sums
// run over its chunks in order whatever the batch; between segments they wait in `sums`.
template <int Bits, typename O>
void weight_rows(const Weights& w, const Acts& a, int64_t m, int64_t n0, int64_t n1, O* y, int64_t n_out) {
  float sums[kRowStep * kGroup * kState];
  // One activation row reuses nothing across weight rows: it streams each row whole.
  const int64_t segment = m > 1 ? kSegment : w.nbp;
  for (int64_t g0 = 0; g0 < m; g0 += kGroup) {
    const int64_t g1 = std::min(m, g0 + kGroup);
    const int64_t stride = (g1 - g0) * kState;
    std::fill(sums, sums + (n1 - n0) * stride, 0.f);
    for (int64_t c0 = 0; c0 < w.nbp; c0 += segment) {
      const int64_t c1 = std::min(w.nbp, c0 + segment);
      for (int64_t m0 = g0; m0 < g1; m0 += kTile) {
        float* st = sums + (m0 - g0) * kState;
        switch (std::min(kTile, g1 - m0)) {
          case 1: tile_rows<Bits, 1>(w, a, m0, n0, n1, c0, c1, st, stride); break;
          case 2: tile_rows<Bits, 2>(w, a, m0, n0, n1, c0, c1, st, stride); break;
          case 3: tile_rows<Bits, 3>(w, a, m0, n0, n1, c0, c1, st, stride); break;
          default: tile_rows<Bits, kTile>(w, a, m0, n0, n1, c0, c1, st, stride);
        }
      }
    }
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t i = g0; i < g1; ++i) {
        y[i * n_out + n] = static_cast<O>(finish(sums + (n - n0) * stride + (i - g0) * kState));
      }
    }
  }
}

template <typename T>
void run(const at::Tensor& x, const Weights& w, int64_t bits, at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), n = y.size(1), nbp = w.nbp;
  at::Tensor q = at::empty({m, nbp * kBlock}, at::kChar);
  at::Tensor d = at::empty({m, nbp}, at::kFloat), s = at::empty({m, nbp}, at::kFloat);
  at::Tensor h = at::empty({m, 2 * nbp}, at::kInt);
  quantize_rows(x.data_ptr<T>(), m, k, nbp, q.data_ptr<int8_t>(), d.data_ptr<float>(), s.data_ptr<float>(),
                h.data_ptr<int32_t>());
  const Acts a{q.data_ptr<int8_t>(), d.data_ptr<float>(), s.data_ptr<float>(), h.data_ptr<int32_t>(), nbp};
  T* out = y.data_ptr<T>();
  at::parallel_for(0, n, kRowStep, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; r += kRowStep) {
      const int64_t r1 = std::min(n1, r + kRowStep);
      if (bits == 4) {
        weight_rows<4>(w, a, m, r, r1, out, n);
      } else if (bits == 6) {
        weight_rows<6>(w, a, m, r, r1, out, n);
      } else {
        weight_rows<8>(w, a, m, r, r1, out, n);
      }
    }
  });
}

// x [M, K] (float32 and bfloat16 read and written as they are, other dtypes through float32);
// codes [N, nbp · 32 · bits / 8] uint8; sm [N, 2 · nbp] fp16 → [M, N] in x's dtype, each value
// rounded once from its float32 sum.
at::Tensor qgemm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& sm, int64_t bits) {
  TORCH_CHECK(bits == 4 || bits == 6 || bits == 8, "qgemm: bits must be 4, 6 or 8, not ", bits);
  TORCH_CHECK(x.dim() == 2 && codes.dim() == 2 && sm.dim() == 2, "qgemm: x, codes and sm must be matrices");
  TORCH_CHECK(codes.scalar_type() == at::kByte && sm.scalar_type() == at::kHalf, "qgemm: codes uint8, sm float16");
  TORCH_CHECK(codes.is_contiguous() && sm.is_contiguous(), "qgemm: codes and sm must be contiguous");
  const bool direct = x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
  const at::Tensor xc = direct ? x.contiguous() : x.to(at::kFloat).contiguous();
  const int64_t m = xc.size(0), k = xc.size(1), n = codes.size(0);
  const int64_t nbp = (k / kBlock + kChunk - 1) / kChunk * kChunk;
  TORCH_CHECK(k % kBlock == 0, "qgemm: the input size must be a multiple of 32, not ", k);
  TORCH_CHECK(codes.size(1) == nbp * kBlock * bits / 8 && sm.size(0) == n && sm.size(1) == 2 * nbp,
              "qgemm: codes or sm do not match an input size of ", k);
  const Weights w{codes.data_ptr<uint8_t>(), sm.data_ptr<at::Half>(), codes.size(1), nbp, n};
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
#elif SAGUARO_AVX2
  return "avx2";
#else
  return "portable";
#endif
}

}  // namespace

TORCH_LIBRARY(saguaro_qgemm, m) {
  m.def("qgemm", &qgemm);
  m.def("isa", &isa);
}
