/* CPU kernels for the memory-bound layers of small CNNs, loaded by native.py through ctypes.
 *
 * 1. The tail of a conv unit, fused: ReLU, BatchNorm (training mode, batch statistics) and dropout.
 *    In these nets every conv is followed by ReLU -> BN -> dropout (or BN -> ReLU -> dropout). Those are
 *    memory-bound passes over the largest tensors of the net, and ATen runs each as its own pass
 *    (forward: ReLU, two for BN, a dropout multiply; backward as many again), storing a mask and two
 *    intermediate tensors for backward. Here the forward is two passes (per-channel statistics, then the
 *    output), the backward two (per-channel sums, then the input gradient), and only the conv output z
 *    is kept: the ReLU, the normalised values and the dropout mask are recomputed from z on the way back.
 *    The dropout mask is a pure function of (seed, element index): a 32-bit integer hash of the index
 *    offset by the seed, so forward and backward regenerate the same mask without storing it, and every
 *    element is dropped with probability p (to within 2^-32). The masks of two calls are windows of one
 *    hash sequence at independent random offsets: they overlap with probability about 2 x size / 2^32,
 *    0.05 % for the largest maps here. (SplitMix64 was tried first: its 64-bit multiplies made the
 *    hash most of the kernel's time.)
 *    Layout: z is contiguous NCHW float32, viewed as N planes per channel of hw floats each.
 *    bn_after = 1: t = relu(z), u = gamma * (t - mean) * invstd + beta, y = u * keep / (1 - p)
 *    bn_after = 0: t = z,       u = gamma * (t - mean) * invstd + beta, y = relu(u) * keep / (1 - p)
 * 2. 2x2 max-pool with stride 2, forward and backward, on contiguous NCHW planes.
 *
 * Parallel with OpenMP: the shared object links libgomp.so.1, which resolves to the copy torch has
 * already loaded, so these loops share torch's thread pool and honour torch.set_num_threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

/* cond ? a : b as bit operations: on random data a branch here mispredicts half the time, which made
 * the max-pool loop four times slower. Written as a ternary, gcc keeps the branch on AVX2 (it if-converts
 * only where AVX-512 masks exist): the tail's backward was 30x slower than its forward. */
static inline float pick(int cond, float a, float b) {
    uint32_t ua, ub, m = 0u - (uint32_t)cond;
    float r;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    ua = (ua & m) | (ub & ~m);
    memcpy(&r, &ua, 4);
    return r;
}

static inline uint32_t keep_bits(uint32_t seed, uint32_t index) {
    uint32_t x = index + seed; /* lowbias32 (C. Wellons' integer hash) of the element index, offset by the seed */
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Planes are walked in chunks: the chunk's dropout mask goes to a stack buffer first (a loop of integer
 * hashing), then the arithmetic runs over plain arrays; keeping the two apart lets both vectorise. */
#define CHUNK 512

static inline void fill_mask(float *buf, int64_t len, uint64_t seed, uint64_t base, uint32_t drop_below, float scale) {
    if (drop_below == 0) { /* no dropout: skip the hashing */
        for (int64_t i = 0; i < len; i++) buf[i] = 1.0f;
        return;
    }
    const uint32_t seed32 = (uint32_t)(seed ^ (seed >> 32)), base32 = (uint32_t)base; /* indices wrap at 2^32 */
#pragma omp simd
    for (int64_t i = 0; i < len; i++) buf[i] = pick(keep_bits(seed32, base32 + (uint32_t)i) >= drop_below, scale, 0.0f);
}

static inline float relu(float v) { return pick(v > 0.0f, v, 0.0f); }

/* Per-channel sums over all N planes, scanned in memory order (image by image, so the hardware
 * prefetcher sees long runs) with one row of partial sums per thread, added up at the end.
 * forward (grad == 0): sums[ch] = sum of t, sums[c + ch] = sum of t^2, t = relu(z) or z.
 * backward (grad == 1): sums[ch] = sum of du, sums[c + ch] = sum of du * xhat.
 * Writes the 2c sums to `sums`; returns 0, or -1 when out of memory. */
static int channel_sums(double *sums, const float *z, const float *dy, const float *gamma, const float *beta,
                        const float *mean, const float *invstd, int64_t n, int64_t c, int64_t hw, int bn_after,
                        int grad, uint32_t drop_below, float scale, uint64_t seed) {
    const int threads = omp_get_max_threads();
    double *partial = calloc((size_t)threads * 2 * c, sizeof(double));
    if (partial == NULL) return -1;
#pragma omp parallel num_threads(threads)
    {
        double *mine = partial + (size_t)omp_get_thread_num() * 2 * c;
        float mask[CHUNK];
#pragma omp for schedule(static)
        for (int64_t plane = 0; plane < n * c; plane++) {
            const int64_t ch = plane % c;
            float s = 0.0f, s2 = 0.0f; /* one plane in float (a few hundred values), accumulated in double */
            if (!grad) {
                const float *p = z + plane * hw;
                if (bn_after) {
#pragma omp simd reduction(+ : s, s2)
                    for (int64_t i = 0; i < hw; i++) { float t = relu(p[i]); s += t; s2 += t * t; }
                } else {
#pragma omp simd reduction(+ : s, s2)
                    for (int64_t i = 0; i < hw; i++) { float t = p[i]; s += t; s2 += t * t; }
                }
            } else {
                const float m = mean[ch], is = invstd[ch], a = gamma[ch] * is, b = beta[ch] - m * a;
                for (int64_t i0 = 0; i0 < hw; i0 += CHUNK) {
                    const int64_t len = hw - i0 < CHUNK ? hw - i0 : CHUNK;
                    const float *p = z + plane * hw + i0, *d = dy + plane * hw + i0;
                    fill_mask(mask, len, seed, (uint64_t)(plane * hw + i0), drop_below, scale);
                    if (bn_after) {
#pragma omp simd reduction(+ : s, s2)
                        for (int64_t i = 0; i < len; i++) {
                            float du = d[i] * mask[i];
                            s += du;
                            s2 += du * ((relu(p[i]) - m) * is);
                        }
                    } else {
#pragma omp simd reduction(+ : s, s2)
                        for (int64_t i = 0; i < len; i++) {
                            const float g = d[i] * mask[i], du = pick(a * p[i] + b > 0.0f, g, 0.0f);
                            s += du;
                            s2 += du * ((p[i] - m) * is);
                        }
                    }
                }
            }
            mine[ch] += s;
            mine[c + ch] += s2;
        }
    }
    for (int64_t k = 0; k < 2 * c; k++) {
        sums[k] = 0.0;
        for (int t = 0; t < threads; t++) sums[k] += partial[(size_t)t * 2 * c + k];
    }
    free(partial);
    return 0;
}

/* Per-channel sums of t and t*t over N planes; then mean, biased variance and 1/sqrt(var + eps). */
int tail_forward(const float *z, float *y, const float *gamma, const float *beta, float *mean_out, float *var_out,
                  float *invstd_out, int64_t n, int64_t c, int64_t hw, float eps, int bn_after, uint32_t drop_below,
                  float scale, uint64_t seed) {
    const double count = (double)n * (double)hw;
    double *sums = malloc(2 * c * sizeof(double));
    if (sums == NULL || channel_sums(sums, z, NULL, NULL, NULL, NULL, NULL, n, c, hw, bn_after, 0, 0, 0.0f, 0) != 0) {
        free(sums);
        return -1;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        double mean = sums[ch] / count;
        double var = sums[c + ch] / count - mean * mean;
        if (var < 0.0) var = 0.0; /* rounding of E[t^2] - E[t]^2 on a constant channel */
        mean_out[ch] = (float)mean;
        var_out[ch] = (float)var;
        invstd_out[ch] = (float)(1.0 / sqrt(var + (double)eps));
    }
    free(sums);
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < n * c; plane++) {
        const int64_t ch = plane % c;
        const float a = gamma[ch] * invstd_out[ch], b = beta[ch] - mean_out[ch] * a;
        float mask[CHUNK];
        for (int64_t i0 = 0; i0 < hw; i0 += CHUNK) {
            const int64_t len = hw - i0 < CHUNK ? hw - i0 : CHUNK;
            const float *p = z + plane * hw + i0;
            float *q = y + plane * hw + i0;
            fill_mask(mask, len, seed, (uint64_t)(plane * hw + i0), drop_below, scale);
            if (bn_after) {
#pragma omp simd
                for (int64_t i = 0; i < len; i++) q[i] = (a * relu(p[i]) + b) * mask[i];
            } else {
#pragma omp simd
                for (int64_t i = 0; i < len; i++) q[i] = relu(a * p[i] + b) * mask[i];
            }
        }
    }
    return 0;
}

/* Gradient of tail_forward: dz from dy, and the gradients of gamma and beta. */
int tail_backward(const float *dy, const float *z, const float *gamma, const float *beta, const float *mean,
                   const float *invstd, float *dz, float *dgamma, float *dbeta, int64_t n, int64_t c, int64_t hw,
                   int bn_after, uint32_t drop_below, float scale, uint64_t seed) {
    const double count = (double)n * (double)hw;
    /* du: the gradient reaching the BN output u (dropout applied; and the ReLU after BN, when there is one) */
    double *sums = malloc(2 * c * sizeof(double));
    if (sums == NULL || channel_sums(sums, z, dy, gamma, beta, mean, invstd, n, c, hw, bn_after, 1, drop_below, scale, seed) != 0) {
        free(sums);
        return -1;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        dbeta[ch] = (float)sums[ch];
        dgamma[ch] = (float)sums[c + ch];
    }
    free(sums);
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < n * c; plane++) {
        const int64_t ch = plane % c;
        const float m = mean[ch], is = invstd[ch], a = gamma[ch] * is, b = beta[ch] - m * a;
        const float mean_du = (float)(dbeta[ch] / count), mean_du_xhat = (float)(dgamma[ch] / count);
        float mask[CHUNK];
        for (int64_t i0 = 0; i0 < hw; i0 += CHUNK) {
            const int64_t len = hw - i0 < CHUNK ? hw - i0 : CHUNK;
            const float *p = z + plane * hw + i0, *d = dy + plane * hw + i0;
            float *q = dz + plane * hw + i0;
            fill_mask(mask, len, seed, (uint64_t)(plane * hw + i0), drop_below, scale);
            if (bn_after) {
#pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    float dt = a * (d[i] * mask[i] - mean_du - (relu(p[i]) - m) * is * mean_du_xhat);
                    q[i] = pick(p[i] > 0.0f, dt, 0.0f); /* ReLU before BN: closed where z <= 0 */
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    const float g = d[i] * mask[i], du = pick(a * p[i] + b > 0.0f, g, 0.0f);
                    q[i] = a * (du - mean_du - (p[i] - m) * is * mean_du_xhat);
                }
            }
        }
    }
    return 0;
}

/* The dropout mask alone (scale or 0 per element), for tests and for anyone checking the statistics. */
void tail_mask(float *out, int64_t numel, uint32_t drop_below, float scale, uint64_t seed) {
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < numel; i0 += CHUNK) {
        const int64_t len = numel - i0 < CHUNK ? numel - i0 : CHUNK;
        fill_mask(out + i0, len, seed, (uint64_t)i0, drop_below, scale);
    }
}

/* 2x2 max-pool, stride 2, on contiguous planes of h x w (odd last row / column dropped, as ATen does).
 * code[k] records which of the window's four pixels won (0 top-left, 1 top-right, 2 bottom-left,
 * 3 bottom-right): the first in row-major order among ties, as in ATen, and a NaN wins so that it
 * propagates. One byte per output instead of ATen's int64 flat index, and one pass instead of ATen's
 * slow NCHW kernel. Two steps per plane: the better of each horizontal pair (right on a strict win),
 * then the better of the two rows (bottom on a strict win), which picks the same winner as a scan in
 * row-major order. With an even width the pairs never straddle rows, so the first step is one long
 * vectorised loop over the plane instead of many loops of ow (11 here) iterations: 2.4x faster. */
int maxpool2x2_forward(const float *x, float *out, uint8_t *code, int64_t planes, int64_t h, int64_t w) {
    const int64_t oh = h / 2, ow = w / 2, pairs = 2 * oh * ow;
    int failed = 0;
#pragma omp parallel
    {
        float *best = malloc((size_t)(pairs > 0 ? pairs : 1) * sizeof(float));
        int32_t *right = malloc((size_t)(pairs > 0 ? pairs : 1) * sizeof(int32_t));
        if (best == NULL || right == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t plane = 0; plane < planes; plane++) {
            if (best == NULL || right == NULL) continue;
            const float *src = x + plane * h * w;
            for (int64_t r = 0; r < 2 * oh; r += (w % 2 == 0) ? 2 * oh : 1) { /* the whole plane at once if w is even */
                const int64_t len = (w % 2 == 0) ? pairs : ow;
                const float *row = src + r * w;
#pragma omp simd
                for (int64_t k = 0; k < len; k++) {
                    const float a0 = row[2 * k], a1 = row[2 * k + 1];
                    const int32_t r1 = (a1 > a0) | (a1 != a1); /* x != x: NaN */
                    best[r * ow + k] = pick(r1, a1, a0);
                    right[r * ow + k] = r1;
                }
            }
            float *o = out + plane * oh * ow;
            uint8_t *kk = code + plane * oh * ow;
            for (int64_t i = 0; i < oh; i++) {
                const float *top = best + 2 * i * ow, *bottom = top + ow;
                const int32_t *top_right = right + 2 * i * ow, *bottom_right = top_right + ow;
#pragma omp simd
                for (int64_t j = 0; j < ow; j++) {
                    const int lower = (bottom[j] > top[j]) | (bottom[j] != bottom[j]);
                    o[i * ow + j] = pick(lower, bottom[j], top[j]);
                    kk[i * ow + j] = (uint8_t)(lower * (2 + bottom_right[j]) + (1 - lower) * top_right[j]);
                }
            }
        }
        free(best);
        free(right);
    }
    return failed ? -1 : 0;
}

void maxpool2x2_backward(const float *dout, const uint8_t *code, float *dx, int64_t planes, int64_t h, int64_t w) {
    const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < planes; plane++) {
        float *dst = dx + plane * h * w;
        for (int64_t i = 0; i < h * w; i++) dst[i] = 0.0f;
        for (int64_t i = 0; i < oh; i++) {
            const float *d = dout + (plane * oh + i) * ow;
            const uint8_t *k = code + (plane * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) dst[(2 * i + (k[j] >> 1)) * w + 2 * j + (k[j] & 1)] = d[j];
        }
    }
}

/* 3. The conv-unit tail of 1. on channels-last (NHWC) tensors, for the nets that run in that layout (depthwise
 *    and 1x1 convs are several times faster there; see fast.py). z is viewed as `rows` = n*h*w rows of c
 *    channels, in memory order. The arithmetic is that of tail_forward / tail_backward; the dropout mask is the
 *    same hash of the element's memory index, so each layout draws its own (equally distributed) masks.
 *    Rows are walked in blocks of whole rows, about BLOCK elements: element i of every block is channel i % c,
 *    so the per-channel coefficients are tiled once to a block's length and every pass is one long vectorised
 *    loop over the block (a loop over a row's 10-20 channels runs mostly in remainder code), with per-position
 *    partial sums folded into channels at the end. */
#define BLOCK 2048
#define FLUSH 16 /* blocks summed in float before the partial sums go to double */

typedef struct {
    int64_t rows, c, per_block, blocks, len; /* len: elements in a full block */
} nhwc_blocks;

static nhwc_blocks blocks_of(int64_t rows, int64_t c) {
    nhwc_blocks g = {rows, c, c >= BLOCK ? 1 : BLOCK / c, 0, 0};
    g.blocks = (rows + g.per_block - 1) / g.per_block;
    g.len = g.per_block * c;
    return g;
}

/* values[ch] repeated along a block: tiled[i] = values[i % c] */
static void tile(float *tiled, const float *values, nhwc_blocks g) {
    for (int64_t i = 0; i < g.len; i++) tiled[i] = values[i % g.c];
}

/* Per-channel sums over all rows (forward: t and t^2; backward: du and du * xhat), as channel_sums does.
 * coef holds 4 tiled arrays: a, b (u = a * t + b), mean, invstd. */
static int nhwc_sums(double *sums, const float *z, const float *dy, const float *coef, nhwc_blocks g, int bn_after,
                     int grad, uint32_t drop_below, float scale, uint64_t seed) {
    const int threads = omp_get_max_threads();
    const int64_t len = g.len;
    double *partial = calloc((size_t)threads * 2 * len, sizeof(double));
    float *scratch = malloc((size_t)threads * 3 * len * sizeof(float));
    int failed = partial == NULL || scratch == NULL;
    if (!failed) {
        const float *a = coef, *b = coef + len, *m = coef + 2 * len, *is = coef + 3 * len;
#pragma omp parallel num_threads(threads)
        {
            const int me = omp_get_thread_num();
            double *mine = partial + (size_t)me * 2 * len;
            float *s = scratch + (size_t)me * 3 * len, *s2 = s + len, *mask = s2 + len;
            int64_t pending = 0;
            for (int64_t i = 0; i < 2 * len; i++) s[i] = 0.0f;
#pragma omp for schedule(static)
            for (int64_t blk = 0; blk < g.blocks; blk++) {
                const int64_t r0 = blk * g.per_block, rows = g.rows - r0 < g.per_block ? g.rows - r0 : g.per_block;
                const int64_t n = rows * g.c;
                const float *p = z + r0 * g.c;
                if (!grad) {
#pragma omp simd
                    for (int64_t i = 0; i < n; i++) {
                        float t = bn_after ? relu(p[i]) : p[i];
                        s[i] += t;
                        s2[i] += t * t;
                    }
                } else {
                    const float *d = dy + r0 * g.c;
                    fill_mask(mask, n, seed, (uint64_t)(r0 * g.c), drop_below, scale);
#pragma omp simd
                    for (int64_t i = 0; i < n; i++) {
                        const float gd = d[i] * mask[i];
                        const float du = bn_after ? gd : pick(a[i] * p[i] + b[i] > 0.0f, gd, 0.0f);
                        const float t = bn_after ? relu(p[i]) : p[i];
                        s[i] += du;
                        s2[i] += du * ((t - m[i]) * is[i]);
                    }
                }
                if (++pending == FLUSH) {
                    for (int64_t i = 0; i < 2 * len; i++) { mine[i] += s[i]; s[i] = 0.0f; }
                    pending = 0;
                }
            }
            for (int64_t i = 0; i < 2 * len; i++) mine[i] += s[i];
        }
        for (int64_t ch = 0; ch < 2 * g.c; ch++) sums[ch] = 0.0;
        for (int t = 0; t < threads; t++) {
            const double *theirs = partial + (size_t)t * 2 * len;
            for (int64_t i = 0; i < len; i++) {
                sums[i % g.c] += theirs[i];
                sums[g.c + i % g.c] += theirs[len + i];
            }
        }
    }
    free(partial);
    free(scratch);
    return failed ? -1 : 0;
}

/* The 4 tiled coefficient arrays of nhwc_sums: a = gamma * invstd, b = beta - mean * a, mean, invstd. */
static float *tiled_coefficients(const float *gamma, const float *beta, const float *mean, const float *invstd,
                                 nhwc_blocks g) {
    float *per_channel = malloc((size_t)4 * g.c * sizeof(float)), *coef = malloc((size_t)4 * g.len * sizeof(float));
    if (per_channel == NULL || coef == NULL) {
        free(per_channel);
        free(coef);
        return NULL;
    }
    for (int64_t ch = 0; ch < g.c; ch++) {
        per_channel[ch] = gamma[ch] * invstd[ch];
        per_channel[g.c + ch] = beta[ch] - mean[ch] * per_channel[ch];
        per_channel[2 * g.c + ch] = mean[ch];
        per_channel[3 * g.c + ch] = invstd[ch];
    }
    for (int k = 0; k < 4; k++) tile(coef + k * g.len, per_channel + k * g.c, g);
    free(per_channel);
    return coef;
}

int tail_forward_nhwc(const float *z, float *y, const float *gamma, const float *beta, float *mean_out,
                      float *var_out, float *invstd_out, int64_t rows, int64_t c, float eps, int bn_after,
                      uint32_t drop_below, float scale, uint64_t seed) {
    const nhwc_blocks g = blocks_of(rows, c);
    double *sums = malloc(2 * c * sizeof(double));
    if (sums == NULL || nhwc_sums(sums, z, NULL, NULL, g, bn_after, 0, 0, 0.0f, 0) != 0) {
        free(sums);
        return -1;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        double mean = sums[ch] / (double)rows;
        double var = sums[c + ch] / (double)rows - mean * mean;
        if (var < 0.0) var = 0.0;
        mean_out[ch] = (float)mean;
        var_out[ch] = (float)var;
        invstd_out[ch] = (float)(1.0 / sqrt(var + (double)eps));
    }
    free(sums);
    float *coef = tiled_coefficients(gamma, beta, mean_out, invstd_out, g);
    if (coef == NULL) return -1;
    const float *a = coef, *b = coef + g.len;
    int failed = 0;
#pragma omp parallel
    {
        float *mask = malloc((size_t)g.len * sizeof(float));
        if (mask == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < g.blocks; blk++) {
            if (mask == NULL) continue;
            const int64_t r0 = blk * g.per_block, n = (rows - r0 < g.per_block ? rows - r0 : g.per_block) * c;
            const float *p = z + r0 * c;
            float *q = y + r0 * c;
            fill_mask(mask, n, seed, (uint64_t)(r0 * c), drop_below, scale);
            if (bn_after) {
#pragma omp simd
                for (int64_t i = 0; i < n; i++) q[i] = (a[i] * relu(p[i]) + b[i]) * mask[i];
            } else {
#pragma omp simd
                for (int64_t i = 0; i < n; i++) q[i] = relu(a[i] * p[i] + b[i]) * mask[i];
            }
        }
        free(mask);
    }
    free(coef);
    return failed ? -1 : 0;
}

int tail_backward_nhwc(const float *dy, const float *z, const float *gamma, const float *beta, const float *mean,
                       const float *invstd, float *dz, float *dgamma, float *dbeta, int64_t rows, int64_t c,
                       int bn_after, uint32_t drop_below, float scale, uint64_t seed) {
    const nhwc_blocks g = blocks_of(rows, c);
    float *coef = tiled_coefficients(gamma, beta, mean, invstd, g);
    double *sums = malloc(2 * c * sizeof(double));
    float *means = malloc((size_t)2 * c * sizeof(float)), *tiled = malloc((size_t)2 * g.len * sizeof(float));
    if (coef == NULL || sums == NULL || means == NULL || tiled == NULL ||
        nhwc_sums(sums, z, dy, coef, g, bn_after, 1, drop_below, scale, seed) != 0) {
        free(coef);
        free(sums);
        free(means);
        free(tiled);
        return -1;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        dbeta[ch] = (float)sums[ch];
        dgamma[ch] = (float)sums[c + ch];
        means[ch] = (float)(sums[ch] / (double)rows);
        means[c + ch] = (float)(sums[c + ch] / (double)rows);
    }
    free(sums);
    tile(tiled, means, g);
    tile(tiled + g.len, means + c, g);
    free(means);
    const float *a = coef, *b = coef + g.len, *m = coef + 2 * g.len, *is = coef + 3 * g.len;
    const float *mean_du = tiled, *mean_du_xhat = tiled + g.len;
    int failed = 0;
#pragma omp parallel
    {
        float *mask = malloc((size_t)g.len * sizeof(float));
        if (mask == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < g.blocks; blk++) {
            if (mask == NULL) continue;
            const int64_t r0 = blk * g.per_block, n = (rows - r0 < g.per_block ? rows - r0 : g.per_block) * c;
            const float *p = z + r0 * c, *d = dy + r0 * c;
            float *q = dz + r0 * c;
            fill_mask(mask, n, seed, (uint64_t)(r0 * c), drop_below, scale);
            if (bn_after) {
#pragma omp simd
                for (int64_t i = 0; i < n; i++) {
                    const float dt = a[i] * (d[i] * mask[i] - mean_du[i] - (relu(p[i]) - m[i]) * is[i] * mean_du_xhat[i]);
                    q[i] = pick(p[i] > 0.0f, dt, 0.0f); /* ReLU before BN: closed where z <= 0 */
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < n; i++) {
                    const float gd = d[i] * mask[i], du = pick(a[i] * p[i] + b[i] > 0.0f, gd, 0.0f);
                    q[i] = a[i] * (du - mean_du[i] - (p[i] - m[i]) * is[i] * mean_du_xhat[i]);
                }
            }
        }
        free(mask);
    }
    free(coef);
    free(tiled);
    return failed ? -1 : 0;
}

/* 4. The 2x2 max-pool of 2. on channels-last (NHWC) tensors: each output pixel is a vectorised loop over its c
 *    channels, comparing the window's four pixels in row-major order (a strict win moves the winner, a NaN
 *    wins), so winners and codes match the NCHW kernel and ATen exactly. */
void maxpool2x2_forward_nhwc(const float *x, float *out, uint8_t *code, int64_t n, int64_t h, int64_t w,
                             int64_t c) {
    const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n * oh; row++) {
        const int64_t img = row / oh, i = row % oh;
        const float *top = x + ((img * h + 2 * i) * w) * c, *bottom = top + w * c;
        for (int64_t j = 0; j < ow; j++) {
            const float *a0 = top + 2 * j * c, *a1 = a0 + c, *a2 = bottom + 2 * j * c, *a3 = a2 + c;
            float *o = out + ((row * ow) + j) * c;
            uint8_t *kk = code + ((row * ow) + j) * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                const int32_t r1 = (a1[ch] > a0[ch]) | (a1[ch] != a1[ch]);
                const float t = pick(r1, a1[ch], a0[ch]);
                const int32_t r3 = (a3[ch] > a2[ch]) | (a3[ch] != a3[ch]);
                const float bt = pick(r3, a3[ch], a2[ch]);
                const int32_t lower = (bt > t) | (bt != bt);
                o[ch] = pick(lower, bt, t);
                kk[ch] = (uint8_t)(lower * (2 + r3) + (1 - lower) * r1);
            }
        }
    }
}

void maxpool2x2_backward_nhwc(const float *dout, const uint8_t *code, float *dx, int64_t n, int64_t h, int64_t w,
                              int64_t c) {
    const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (int64_t img = 0; img < n; img++) {
        float *dst = dx + img * h * w * c;
        for (int64_t i = 0; i < h * w * c; i++) dst[i] = 0.0f;
        for (int64_t i = 0; i < oh; i++) {
            for (int64_t j = 0; j < ow; j++) {
                const float *d = dout + ((img * oh + i) * ow + j) * c;
                const uint8_t *k = code + ((img * oh + i) * ow + j) * c;
                for (int64_t ch = 0; ch < c; ch++) {
                    dst[((2 * i + (k[ch] >> 1)) * w + 2 * j + (k[ch] & 1)) * c + ch] = d[ch];
                }
            }
        }
    }
}
