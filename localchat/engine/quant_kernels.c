/* Block-quantized weights for CPU decoding: the products localchat's q8 and q4 formats use.
 *
 * Owns: packing float32 weights into blocks of 32 along each row (q8: GGUF's Q8_0 layout; q4:
 * super-blocks of 8 blocks, llama.cpp's Q4_K scheme), multiplying a few rows of activations by
 * them, and widening them back to float32 for a prompt's matrix product. Decoding a 1-8B model
 * reads every weight once per token; these kernels read 1.06 (q8) or 0.58 (q4) bytes a weight and
 * multiply in int8 with AVX2, as llama.cpp does, where torch's int8 and int4 CPU kernels reached
 * ~9 GB/s on an AVX2 CPU.
 *
 * q8: a row of k weights is nb = k / 32 blocks, stored as arrays so that 8 blocks' scales load
 *   at once: d[nb] (fp16), then q[nb][32] (int8); w = d * q (GGUF's Q8_0 per block). Activations
 *   become int8 per 32 (scale = max|a| / 127, as Q8_0); sums are int32 per block, float across.
 * q4: a row is super-blocks of 8 blocks of 32 (256 weights; the last may hold fewer, k % 64 == 0),
 *   each 20 + 128 bytes (4.625 bits a weight), the scheme of llama.cpp's Q4_K with 8-bit scales:
 *     d, dmin (fp16), sc[8] (u8), mn[8] (i8), q[4][32] (byte t of pair p: block 2p's q[t] in the
 *     low nibble, block 2p+1's in the high one);      w = (d * sc[j]) * q + (dmin * mn[j])
 *   Activations become int8 per 256 with each block's sum (llama.cpp's Q8_K), so a super-block's
 *   8 products are summed in int32, scales and all, and turned into float once: a third fewer
 *   instructions per weight than a float scale per block (Q4_1's), which bounded the one-row speed.
 *
 * Built at first use by localchat/engine/native.py (gcc or cc, -O3 -mavx2 -mfma -mf16c -fopenmp)
 * and loaded with ctypes; nothing here knows about Python or torch. Threads: OpenMP over output
 * rows, linked to torch's own OpenMP runtime where there is one, so the two share one pool.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QK 32
#define SUPER 8    /* q4: blocks per super-block */
#define SB_HEAD 20 /* q4: a super-block's d, dmin, sc[8], mn[8] */
#define SB_BYTES (SB_HEAD + SUPER * QK / 2)


int lc_row_bytes(int kind, int64_t k) {
    return (int)(kind == 4 ? (k + SUPER * QK - 1) / (SUPER * QK) * SB_HEAD + k / 2 : k / QK * 34);
}

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline uint16_t float_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

/* ---- packing (at load) ---- */

static void pack_row_q8(const float *x, uint8_t *row, int64_t nb) {
    uint16_t *ds = (uint16_t *)row;
    int8_t *qs = (int8_t *)(row + 2 * nb);
    for (int64_t b = 0; b < nb; b++) {
        const float *v = x + b * QK;
        const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
        __m256 a8 = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) a8 = _mm256_max_ps(a8, _mm256_and_ps(_mm256_loadu_ps(v + 8 * j), no_sign));
        float amax = hmax(a8);
        ds[b] = float_to_half(amax / 127.f);
        float d = half_to_float(ds[b]);
        __m256 inv = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f), top = _mm256_set1_ps(127.f);
        __m256i i[4];
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * j), inv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            i[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, _mm256_sub_ps(_mm256_setzero_ps(), top)), top));
        }
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qs + b * QK), packed);
    }
}

/* Four sums at once: the totals of a, b, c and d's lanes. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d), all = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1));
}

/* The scale and minimum of one q4 block: of the plain min/max fit and 5 candidate scales around
 * it (each with the least-squares scale and minimum for its rounding), the one with the least
 * squared error weighted by rms + |x| (the search of llama.cpp's Q4_K, make_qkx2_quants, with 5
 * of its 21 steps). Gaussian weights: relative error 0.078 (min/max, as GGUF's Q4_1) -> 0.071;
 * 21 steps gave 0.0705 at 4x the packing time (1.7B: 5.8 s with 5 steps on 2 cores). */
static void fit_q4(const float *v, float *d_out, float *m_out) {
    __m256 x[4], w[4], lo8 = _mm256_loadu_ps(v), hi8 = lo8, sq = _mm256_setzero_ps();
    const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), zero = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        x[j] = _mm256_loadu_ps(v + 8 * j);
        lo8 = _mm256_min_ps(lo8, x[j]), hi8 = _mm256_max_ps(hi8, x[j]);
        sq = _mm256_fmadd_ps(x[j], x[j], sq);
    }
    float hi = hmax(hi8), lo = -hmax(_mm256_sub_ps(zero, lo8));
    *d_out = (hi - lo) / 15.f, *m_out = lo;
    if (!(hi > lo)) return;
    __m256 av = _mm256_set1_ps(sqrtf(hsum8(sq) / QK)), sw = zero, swx = zero, swxx = zero;
    for (int j = 0; j < 4; j++) {
        w[j] = _mm256_add_ps(av, _mm256_and_ps(x[j], no_sign));
        __m256 wx = _mm256_mul_ps(w[j], x[j]);
        sw = _mm256_add_ps(sw, w[j]), swx = _mm256_add_ps(swx, wx), swxx = _mm256_fmadd_ps(wx, x[j], swxx);
    }
    float sums[4];
    _mm_storeu_ps(sums, hsum4(sw, swx, swxx, zero));
    float sum_w = sums[0], sum_x = sums[1], sum_xx = sums[2], best = INFINITY;
    const __m256 vlo = _mm256_set1_ps(lo), fifteen = _mm256_set1_ps(15.f);
    float inv_range = 1.f / (hi - lo); /* divisions dominated: one here, one per candidate below */
    for (int step = -1; step <= 4; step++) { /* -1: the plain fit itself */
        float iscale = (step < 0 ? 15.f : 14.2f + 0.4f * step) * inv_range;
        __m256 vi = _mm256_set1_ps(iscale), sl = zero, sl2 = zero, sxl = zero;
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(x[j], vlo), vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256 l = _mm256_min_ps(_mm256_max_ps(t, zero), fifteen), wl = _mm256_mul_ps(w[j], l);
            sl = _mm256_add_ps(sl, wl), sl2 = _mm256_fmadd_ps(wl, l, sl2), sxl = _mm256_fmadd_ps(wl, x[j], sxl);
        }
        _mm_storeu_ps(sums, hsum4(sl, sl2, sxl, zero));
        float a = sums[0], b = sums[1], c = sums[2], d = (hi - lo) / 15.f, m = lo;
        if (step >= 0) {
            float det = sum_w * b - a * a;
            if (!(det > 0.f)) continue;
            float inv = 1.f / det;
            d = (sum_w * c - sum_x * a) * inv, m = (b * sum_x - a * c) * inv;
        }
        /* sum of w (d l + m - x)^2, from the sums alone */
        float e = d * d * b + 2.f * d * m * a - 2.f * d * c + m * m * sum_w - 2.f * m * sum_x + sum_xx;
        if (e < best && d > 0.f) best = e, *d_out = d, *m_out = m;
    }
}

/* A block's 32 levels round((v - m) / d) in 0..15, as 32 bytes in order. */
static inline __m256i q4_levels(const float *v, float d, float m) {
    __m256 inv = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f), vm = _mm256_set1_ps(m);
    __m256i i[4];
    for (int j = 0; j < 4; j++) {
        __m256 t = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + 8 * j), vm), inv),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        i[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(15.f)));
    }
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Each block's own fit (fit_q4), then its scale and minimum as 8-bit multiples of the
 * super-block's d and dmin, and its levels for the scale and minimum so stored. */
static void pack_row_q4(const float *x, uint8_t *row, int64_t nb) {
    for (int64_t s0 = 0; s0 < nb; s0 += SUPER) {
        int count = (int)(nb - s0 < SUPER ? nb - s0 : SUPER);
        uint8_t *sb = row + s0 / SUPER * SB_BYTES, *sc = sb + 4, *qs = sb + SB_HEAD;
        int8_t *mn = (int8_t *)(sb + 12);
        float d[SUPER], m[SUPER], dmax = 0.f, mmax = 0.f;
        for (int j = 0; j < count; j++) {
            fit_q4(x + (s0 + j) * QK, &d[j], &m[j]);
            dmax = fmaxf(dmax, d[j]), mmax = fmaxf(mmax, fabsf(m[j]));
        }
        uint16_t hd = float_to_half(dmax / 255.f), hm = float_to_half(mmax / 127.f);
        memcpy(sb, &hd, 2), memcpy(sb + 2, &hm, 2);
        float D = half_to_float(hd), M = half_to_float(hm);
        memset(sc, 0, 2 * SUPER);
        __m256i levels[SUPER];
        for (int j = 0; j < count; j++) {
            int si = D > 0.f ? (int)lrintf(d[j] / D) : 0, mi = M > 0.f ? (int)lrintf(m[j] / M) : 0;
            sc[j] = (uint8_t)(si < 0 ? 0 : si > 255 ? 255 : (si == 0 && d[j] > 0.f) ? 1 : si);
            mn[j] = (int8_t)(mi < -127 ? -127 : mi > 127 ? 127 : mi);
            levels[j] = q4_levels(x + (s0 + j) * QK, D * sc[j], M * mn[j]);
        }
        for (int p = 0; 2 * p < count; p++) /* k % 64 == 0: blocks come in pairs */
            _mm256_storeu_si256((__m256i *)(qs + 32 * p),
                                _mm256_or_si256(levels[2 * p], _mm256_slli_epi16(levels[2 * p + 1], 4)));
    }
}

/* w: n x k float32 (row-major), k % 32 == 0; out: n rows of lc_row_bytes(kind, k) */
void lc_pack(int kind, const float *w, int64_t n, int64_t k, uint8_t *out) {
    int64_t nb = k / QK, stride = lc_row_bytes(kind, k);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        if (kind == 4)
            pack_row_q4(w + r * k, out + r * stride, nb);
        else
            pack_row_q8(w + r * k, out + r * stride, nb);
    }
}

/* ---- widening (for a prompt's float32 matrix product) ---- */

void lc_unpack(int kind, const uint8_t *blocks, int64_t n, int64_t k, float *out) {
    int64_t nb = k / QK, stride = lc_row_bytes(kind, k);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = blocks + r * stride;
        const uint16_t *ds = (const uint16_t *)row;
        float *o = out + r * k;
        for (int64_t b = 0; b < nb; b++, o += QK) {
            __m256 d = kind == 4 ? _mm256_setzero_ps() : _mm256_set1_ps(half_to_float(ds[b]));
            if (kind == 4) {
                const uint8_t *sb = row + b / SUPER * SB_BYTES;
                int j = (int)(b % SUPER);
                d = _mm256_set1_ps(half_to_float(*(const uint16_t *)sb) * sb[4 + j]);
                __m256 m = _mm256_set1_ps(half_to_float(*(const uint16_t *)(sb + 2)) * ((const int8_t *)sb)[12 + j]);
                const uint8_t *q = sb + SB_HEAD + 32 * (j / 2);
                int shift = 4 * (j & 1);
                for (int t = 0; t < QK; t += 8) {
                    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + t)));
                    v = _mm256_and_si256(_mm256_srli_epi32(v, shift), _mm256_set1_epi32(0x0F));
                    _mm256_storeu_ps(o + t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), d, m));
                }
            } else {
                const int8_t *q = (const int8_t *)(row + 2 * nb) + b * QK;
                for (int j = 0; j < QK; j += 8) {
                    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + j)));
                    _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
                }
            }
        }
    }
}

/* ---- products for a few rows (decoding) ---- */

typedef struct {       /* one row of activations, quantized for one kind of weights */
    const int8_t *q;   /* nb * 32, 32-byte aligned */
    const float *d;    /* q8: each block's scale, nb padded with zeros to a multiple of 8; q4: per super-block */
    const int16_t *s;  /* q4: each block's sum, 8 per super-block (zeros past the row's end); q8: NULL */
} act;

static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

static inline float absmax(const float *x, int64_t count) {
    const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 amax = _mm256_setzero_ps();
    for (int64_t t = 0; t < count; t += 8) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(x + t), no_sign));
    return hmax(amax);
}

/* 32 activations as int8 round(v / scale) into q (32-byte aligned); returns their sum */
static inline int quantize_block(const float *v, float scale, int8_t *q) {
    __m256 inv = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
    __m256i i[4];
    for (int j = 0; j < 4; j++)
        i[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * j), inv),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    _mm256_store_si256((__m256i *)q, _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3])));
}

/* q8: per block of 32, scale = max|x| / 127 (as llama.cpp's Q8_0) */
static void quantize_activations(const float *x, int64_t nb, int8_t *q, float *d) {
    for (int64_t b = 0; b < nb; b++) {
        d[b] = absmax(x + b * QK, QK) / 127.f;
        quantize_block(x + b * QK, d[b], q + b * QK);
    }
}

static inline __m256 load_halves(const uint16_t *h, int64_t count) {
    if (count >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    uint16_t tmp[8] = {0};
    memcpy(tmp, h, (size_t)count * 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
}

/* Bytes ahead of the weights being read that each kernel asks the cache for (rows are contiguous,
 * so this runs into the next rows). The hardware prefetcher alone kept a decode step at ~65% of the
 * read bandwidth; 2-4 KB ahead made one row 15-25% faster in interleaved runs, 1 KB less so. */
#define PREFETCH 2048

#define MAX_ROWS 4 /* activation rows multiplied per pass over a weight row (it stays in L1) */

/* One q8 block of weights times one block of activations, as 8 int32 sums: |q| times the
 * activations with q's signs (maddubs takes one unsigned operand). */
static inline __m256i block_sums(const uint8_t *row, int64_t nb, int64_t b, const int8_t *x) {
    __m256i q = _mm256_loadu_si256((const __m256i *)(row + 2 * nb + b * QK));
    __m256i a = _mm256_sign_epi8(_mm256_load_si256((const __m256i *)x), q);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), a), _mm256_set1_epi16(1));
}

/* R is a constant at each call site, so each count gets its own unrolled loop with registers.
 * One row takes two accumulators (even and odd blocks): one alone made every block wait for the
 * previous block's multiply-add (its latency), which bounded a single row's speed (17.7 -> 23.3 GB/s). */
static inline __attribute__((always_inline)) void dot_rows(const uint8_t *row, const act *a, int R, int64_t nb,
                                                           float *out) {
    const uint16_t *wd = (const uint16_t *)row;
    __m256 acc[MAX_ROWS][2];
    float scale[MAX_ROWS][8] __attribute__((aligned(32)));
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
        int64_t count = nb - b0 < 8 ? nb - b0 : 8;
        __m256 d8 = load_halves(wd + b0, count);
        for (int i = 0; i < R; i++) _mm256_store_ps(scale[i], _mm256_mul_ps(d8, _mm256_loadu_ps(a[i].d + b0)));
        for (int64_t j = 0; j < count; j++) {
            int64_t b = b0 + j;
            if (j & 1) _mm_prefetch((const char *)(row + 2 * nb + b * QK + PREFETCH), _MM_HINT_T0);
            for (int i = 0; i < R; i++) {
                __m256 p = _mm256_cvtepi32_ps(block_sums(row, nb, b, a[i].q + b * QK));
                int slot = R == 1 ? (int)(j & 1) : 0; /* several rows already make independent chains */
                acc[i][slot] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scale[i][j]), p, acc[i][slot]);
            }
        }
    }
    for (int i = 0; i < R; i++) out[i] = hsum8(_mm256_add_ps(acc[i][0], acc[i][1]));
}

/* q4: R rows of activations (int8 per super-block: a.q, scale a.d[super-block], each block's sum
 * a.s as int16 in b16) times one weight row. Per pair of blocks: one 32-byte load, two nibble masks,
 * and per row two maddubs and two madd whose multiplier is the block's 8-bit scale. */
static inline __attribute__((always_inline)) void dot_q4_rows(const uint8_t *row, const act *a, int R, int64_t nb,
                                                              float *out) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[MAX_ROWS];
    __m128 mins[MAX_ROWS];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps(), mins[i] = _mm_setzero_ps();
    for (int64_t s0 = 0; s0 < nb; s0 += SUPER) {
        const uint8_t *sb = row + s0 / SUPER * SB_BYTES, *qs = sb + SB_HEAD;
        int pairs = (int)((nb - s0 < SUPER ? nb - s0 : SUPER) / 2);
        float D = half_to_float(*(const uint16_t *)sb), M = half_to_float(*(const uint16_t *)(sb + 2));
        __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sb + 4))));
        __m128i mn16 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(sb + 12)));
        __m256i sum[MAX_ROWS];
        for (int i = 0; i < R; i++) sum[i] = _mm256_setzero_si256();
        for (int p = 0; p < pairs; p++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
            if (p & 1) _mm_prefetch((const char *)(qs + 32 * p + PREFETCH), _MM_HINT_T0);
            __m256i q0 = _mm256_and_si256(raw, low), q1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            /* every int16 lane takes block j's scale: bytes 2j and 2j + 1 of each half */
            __m256i s0v = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * p))));
            __m256i s1v = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * p + 1))));
            for (int i = 0; i < R; i++) {
                const int8_t *x = a[i].q + (s0 + 2 * p) * QK;
                __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, _mm256_load_si256((const __m256i *)x)), s0v);
                __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, _mm256_load_si256((const __m256i *)(x + QK))), s1v);
                sum[i] = _mm256_add_epi32(sum[i], _mm256_add_epi32(p0, p1));
            }
        }
        for (int i = 0; i < R; i++) {
            float ad = a[i].d[s0 / SUPER];
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(D * ad), _mm256_cvtepi32_ps(sum[i]), acc[i]);
            __m128i m = _mm_madd_epi16(mn16, _mm_loadu_si128((const __m128i *)(a[i].s + s0)));
            mins[i] = _mm_fmadd_ps(_mm_set1_ps(M * ad), _mm_cvtepi32_ps(m), mins[i]);
        }
    }
    /* the mins stay a vector until here: a horizontal sum per super-block and row cost 7-18% at 4 rows */
    for (int i = 0; i < R; i++)
        out[i] = hsum8(_mm256_add_ps(acc[i], _mm256_insertf128_ps(_mm256_setzero_ps(), mins[i], 0)));
}

/* q4: per super-block of up to 256, scale = max|x| / 127, and each block's sum of q (llama.cpp's Q8_K) */
static void quantize_activations_q4(const float *x, int64_t nb, int8_t *q, float *d, int16_t *s) {
    for (int64_t s0 = 0; s0 < nb; s0 += SUPER) {
        int count = (int)(nb - s0 < SUPER ? nb - s0 : SUPER);
        float scale = d[s0 / SUPER] = absmax(x + s0 * QK, count * QK) / 127.f;
        for (int j = 0; j < SUPER; j++)
            s[s0 + j] = j < count ? (int16_t)quantize_block(x + (s0 + j) * QK, scale, q + (s0 + j) * QK) : 0;
    }
}

/* each row count gets its own unrolled copy of each kernel */
#define DOT(R) (kind == 4 ? dot_q4_rows(row, a, R, nb, out) : dot_rows(row, a, R, nb, out))
static void dot(int kind, const uint8_t *row, const act *a, int rows, int64_t nb, float *out) {
    switch (rows) {
        case 1: DOT(1); break;
        case 2: DOT(2); break;
        case 3: DOT(3); break;
        default: DOT(4); break;
    }
}
#undef DOT

/* y (m x n) = x (m x k) times the weights (n x k) transposed; returns 0, or -1 when out of memory */
int lc_matmul(int kind, const uint8_t *blocks, int64_t n, int64_t k, const float *x, int64_t m, float *y) {
    int64_t nb = k / QK, stride = lc_row_bytes(kind, k);
    int64_t scales = kind == 4 ? (nb + SUPER - 1) / SUPER : (nb + 7) / 8 * 8;  /* per row */
    int64_t sums_per_row = kind == 4 ? scales * SUPER : 0;
    int8_t *q = (int8_t *)aligned_alloc(32, (size_t)(m * nb * QK));
    float *ds = (float *)calloc((size_t)(m * scales), sizeof(float));
    int16_t *sums = sums_per_row ? (int16_t *)malloc(sizeof(int16_t) * (size_t)(m * sums_per_row)) : NULL;
    act *rows_a = (act *)malloc(sizeof(act) * (size_t)m);
    if (!q || !ds || (sums_per_row && !sums) || !rows_a) {
        free(q), free(ds), free(sums), free(rows_a);
        return -1;
    }
    for (int64_t i = 0; i < m; i++) {
        int8_t *qi = q + i * nb * QK;
        float *di = ds + i * scales;
        int16_t *si = sums ? sums + i * sums_per_row : NULL;
        if (kind == 4)
            quantize_activations_q4(x + i * k, nb, qi, di, si);
        else
            quantize_activations(x + i * k, nb, qi, di);
        rows_a[i] = (act){qi, di, si};
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        for (int64_t i0 = 0; i0 < m; i0 += MAX_ROWS) {
            int rows = (int)(m - i0 < MAX_ROWS ? m - i0 : MAX_ROWS);
            float out[MAX_ROWS];
            dot(kind, blocks + r * stride, rows_a + i0, rows, nb, out);
            for (int i = 0; i < rows; i++) y[(i0 + i) * n + r] = out[i];
        }
    }
    free(q), free(ds), free(sums), free(rows_a);
    return 0;
}
