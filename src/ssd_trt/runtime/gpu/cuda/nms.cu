// NMS in five kernels (see kernels.py). NT, MAXCAND, NBINS, ROW_WARPS and CAND_WORDS come from
// kernels.py as -D macros.


// Order-preserving unsigned key of a float.
__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Unique 64-bit key: score first, then the lower flat index (anchor * C + class) first.
__device__ __forceinline__ u64 cand_key(float s, u32 flat) {
    return ((u64)fkey(s) << 32) | (u64)(0xFFFFFFFFu - flat);
}

// Inclusive block scan of one int per thread (NT threads).
__device__ __forceinline__ int block_scan(int v, int* warp_sums) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += t;
    }
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int s = warp_sums[lane];
        #pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += t;
        }
        warp_sums[lane] = s;
    }
    __syncthreads();
    int r = v + (warp > 0 ? warp_sums[warp - 1] : 0);
    __syncthreads();  // warp_sums is reused by the next call
    return r;
}

// IoU exactly as ssd_trt.nms.box_iou computes it in float32 (no fused multiply-add).
__device__ __forceinline__ float iou(float4 a, float4 b) {
    float h = fmaxf(__fsub_rn(fminf(a.z, b.z), fmaxf(a.x, b.x)), 0.f);
    float w = fmaxf(__fsub_rn(fminf(a.w, b.w), fmaxf(a.y, b.y)), 0.f);
    float inter = __fmul_rn(h, w);
    float area_a = __fmul_rn(__fsub_rn(a.z, a.x), __fsub_rn(a.w, a.y));
    float area_b = __fmul_rn(__fsub_rn(b.z, b.x), __fsub_rn(b.w, b.y));
    float uni = __fsub_rn(__fadd_rn(area_a, area_b), inter);
    // Disjoint boxes: 0 without the (slow, correctly rounded) division; the same comparison.
    return inter > 0.f && uni > 0.f ? __fdiv_rn(inter, uni) : 0.f;
}

static_assert(NBINS == 2 * NT, "the class scan reads two bins per thread");

#define SCRATCH_KEYS (MAXCAND * 16)  // u64 keys that fit the per-image mask scratch

// Per-image candidate record of the select kernel, in int32 words: count, then per candidate in
// score order box (float4), score, class (0-based), [pos, gend) of its class group (int2), and
// the candidates grouped by class (memb).
#define C_BOX 4
#define C_SCORE (C_BOX + 4 * MAXCAND)
#define C_CLS (C_SCORE + MAXCAND)
#define C_RANGE (C_CLS + MAXCAND)
#define C_MEMB (C_RANGE + 2 * MAXCAND)
static_assert(CAND_WORDS == C_MEMB + MAXCAND + 12, "kernels.CAND_WORDS is out of date");

// Coarse, monotone bucket of a key: 16 buckets per octave for scores in [2^-64, 2).
__device__ __forceinline__ int bucket0(u64 k) {
    u32 hi = (u32)(k >> 32);
    if (hi < 0x80000000u) return 0;
    if (hi >= 0xC0000000u) return NBINS - 1;
    return (int)((hi >> 19) & 0x7FFu);
}

// Warp-aggregated shared histogram increment: lanes hitting one bin add once. All 32 lanes
// of the warp must call it (active or not).
__device__ __forceinline__ void hist_add(int* hist, int bin, bool active) {
    u32 act = __ballot_sync(0xffffffffu, active);
    if (!active) return;
    u32 peers = __match_any_sync(act, bin);
    if ((int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
}

// Warp-aggregated append to a shared-counter list. All 32 lanes must call it.
__device__ __forceinline__ void append(u64* list, u64 k, bool active, int* counter) {
    u32 act = __ballot_sync(0xffffffffu, active);
    if (!act) return;
    int lane = threadIdx.x & 31, leader = __ffs(act) - 1, base = 0;
    if (lane == leader) base = atomicAdd(counter, __popc(act));
    base = __shfl_sync(0xffffffffu, base, leader);
    if (active) list[base + __popc(act & ((1u << lane) - 1u))] = k;
}

// Candidates straight from the score tensor.
template <typename TS>
struct ScoreSource {
    const TS* sc;  // the image's scores, starting at flat index `off`
    float thr;
    u32 off;
    __device__ __forceinline__ bool get(long long i, long long n, u64& k) const {
        if (i >= n) return false;
        float s = load_f(sc, i);
        k = cand_key(s, off + (u32)i);
        return s > thr;
    }
};
// Candidates from a compacted key list.
struct KeySource {
    const u64* keys;
    __device__ __forceinline__ bool get(long long i, long long n, u64& k) const {
        if (i >= n) return false;
        k = keys[i];
        return true;
    }
};

// Calls f(key, valid) for every candidate of src, ITEMS loads in flight per thread (one
// 1024-thread block per image is latency-bound otherwise). Warp-uniform: all lanes call f.
#define ITEMS 8
template <typename Src, typename F>
__device__ __forceinline__ void scan_all(const Src& src, long long n, F f) {
    for (long long base = 0; base < n; base += (long long)NT * ITEMS) {
        u64 k[ITEMS];
        bool ok[ITEMS];
        #pragma unroll
        for (int j = 0; j < ITEMS; ++j)
            ok[j] = src.get(base + (long long)j * NT + threadIdx.x, n, k[j]);
        #pragma unroll
        for (int j = 0; j < ITEMS; ++j) f(k[j], ok[j]);
    }
}

// Scan a histogram from its top bin: the bin d holding the need-th element and the count in
// bins above it. Returns the total count. Block-wide; every thread gets the results.
__device__ int find_cut(const int* hist, int nbins, int need, int* warp_sums, int& d,
                        int& above, int* s_digit, int* s_above, int* s_total) {
    const int tid = threadIdx.x;
    const int r = nbins - 1 - 2 * tid;  // thread t owns bins r and r - 1, from the top
    const int hr = r >= 0 ? hist[r] : 0, hr1 = r >= 1 ? hist[r - 1] : 0;
    const int incl = block_scan(hr + hr1, warp_sums);
    const int up = incl - hr - hr1;
    if (tid == NT - 1) *s_total = incl;
    if (tid == 0) { *s_digit = 0; *s_above = 0; }
    __syncthreads();
    if (r >= 0 && up < need && need <= up + hr) {
        *s_digit = r; *s_above = up;
    } else if (r >= 1 && up + hr < need && need <= up + hr + hr1) {
        *s_digit = r - 1; *s_above = up + hr;
    }
    __syncthreads();
    d = *s_digit;
    above = *s_above;
    const int total = *s_total;
    __syncthreads();
    return total;
}

// Radix passes over the full 64-bit keys of bucket d until the cut is exact (or a whole
// sub-bucket is taken): digits of 11, 11, 10 bits (score), then 11, 11, 10 (index).
template <typename Src>
__device__ void refine(Src src, long long n, int d, int& remaining, u64& prefix, u64& pmask,
                       int* hist, int* warp_sums, int* s_digit, int* s_above, int* s_total) {
    const int shifts[6] = {53, 42, 32, 21, 10, 0};
    const int widths[6] = {11, 11, 10, 11, 11, 10};
    for (int pass = 0; pass < 6; ++pass) {
        for (int b = threadIdx.x; b < NBINS; b += NT) hist[b] = 0;
        __syncthreads();
        const int shift = shifts[pass];
        const u32 dmask = (1u << widths[pass]) - 1u;
        scan_all(src, n, [&](u64 k, bool ok) {
            ok = ok && bucket0(k) == d && (k & pmask) == prefix;
            hist_add(hist, ok ? (int)((u32)(k >> shift) & dmask) : 0, ok);
        });
        __syncthreads();
        int digit, up;
        find_cut(hist, (int)dmask + 1, remaining, warp_sums, digit, up, s_digit, s_above,
                 s_total);
        remaining -= up;
        prefix |= (u64)digit << shift;
        pmask |= (u64)dmask << shift;
        const int in_bucket = hist[digit];
        __syncthreads();
        if (in_bucket == remaining) break;
    }
}

// Keys above bucket d, or in it and at or above the refined prefix, into `keys`.
template <typename Src>
__device__ void gather(Src src, long long n, int d, u64 prefix, u64 pmask, u64* keys,
                       int* counter) {
    scan_all(src, n, [&](u64 k, bool ok) {
        if (ok) {
            int b = bucket0(k);
            ok = b > d || (b == d && (k & pmask) >= prefix);
        }
        append(keys, k, ok, counter);
    });
}

// nanosecond stamp for the optional phase-timing buffer
__device__ __forceinline__ long long gtime() {
    long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t;
}

// The slice [lo, hi) of one image's A*C flat candidates handled by block blockIdx.x.
__device__ __forceinline__ void chunk_of(long long total, long long& lo, long long& hi) {
    long long chunk = (total + gridDim.x - 1) / gridDim.x;
    lo = min(total, (long long)blockIdx.x * chunk);
    hi = min(total, lo + chunk);
}

// Stage 1 of NMS, grid (S, N): the coarse bucket0 histogram of every image's candidates above
// the threshold, S blocks per image, summed into ghist [N, NBINS] (zero on entry; the select
// kernel zeroes it again after reading it).
template <typename TS>
__device__ void nms_hist(const TS* __restrict__ scores, int A, int C, float score_thr,
                         int* __restrict__ ghist) {
    __shared__ int hist[NBINS];
    const int img = blockIdx.y, tid = threadIdx.x;
    const long long total = (long long)A * C;
    long long lo, hi;
    chunk_of(total, lo, hi);
    for (int b = tid; b < NBINS; b += NT) hist[b] = 0;
    __syncthreads();
    const ScoreSource<TS> src{scores + (long long)img * total + lo, score_thr, (u32)lo};
    scan_all(src, hi - lo, [&](u64 k, bool ok) { hist_add(hist, ok ? bucket0(k) : 0, ok); });
    __syncthreads();
    int* g = ghist + (long long)img * NBINS;
    for (int b = tid; b < NBINS; b += NT)
        if (hist[b]) atomicAdd(&g[b], hist[b]);
}

// The cut from an image's coarse histogram (copied into shared `hist`): count above the
// threshold, bucket d holding the cap-th best (-1: all are taken), candidates above d.
struct Cut {
    int count, d, above, in_cut;
    bool take_all;
};
__device__ __forceinline__ Cut cut_of(const int* hist, int cap, int* warp_sums, int* s_digit,
                                      int* s_above, int* s_total) {
    Cut c;
    c.count = find_cut(hist, NBINS, cap, warp_sums, c.d, c.above, s_digit, s_above, s_total);
    c.take_all = c.count <= cap;
    if (c.take_all) { c.d = -1; c.above = c.count; c.in_cut = c.count; }
    else c.in_cut = c.above + hist[c.d];
    return c;
}

// Stage 2, grid (S, N): every candidate in bucket d or above appended to the image's key list
// (the mask scratch, SCRATCH_KEYS keys; gcount [N] counts them, zero on entry) when they fit.
template <typename TS>
__device__ void nms_compact(const TS* __restrict__ scores, int A, int C, float score_thr,
                            int cap, const int* __restrict__ ghist, int* __restrict__ gcount,
                            u32* __restrict__ mask) {
    __shared__ int hist[NBINS];
    __shared__ int warp_sums[32];
    __shared__ int s_digit, s_above, s_total;
    const int img = blockIdx.y, tid = threadIdx.x;
    const long long total = (long long)A * C;
    const int* g = ghist + (long long)img * NBINS;
    for (int b = tid; b < NBINS; b += NT) hist[b] = g[b];
    __syncthreads();
    const Cut cut = cut_of(hist, cap, warp_sums, &s_digit, &s_above, &s_total);
    if (cut.in_cut > SCRATCH_KEYS) return;  // the select kernel scans all scores instead
    long long lo, hi;
    chunk_of(total, lo, hi);
    u64* list = (u64*)(mask + (long long)img * MAXCAND * 32);
    const ScoreSource<TS> src{scores + (long long)img * total + lo, score_thr, (u32)lo};
    const int d = cut.d;
    scan_all(src, hi - lo,
             [&](u64 k, bool ok) { append(list, k, ok && bucket0(k) >= d, &gcount[img]); });
}

// Stage 3, one block per image. boxes [N, A, 4] ([ymin, xmin, ymax, xmax]); scores [N, A, C].
// mask: scratch of N * MAXCAND * 32 words (the key list of stage 2, then suppression rows).
// out: per image 1 + 6K int32 words: num, boxes [K, 4] f32, scores [K] f32, classes [K] int32
// (1-based), zero padded. dbg: null, or 16 int64 per image of phase end times (ns).
template <typename TB, typename TS>
__device__ void select_nms(const TB* __restrict__ boxes, const TS* __restrict__ scores, int A,
                           int C, float score_thr, float iou_thr, int max_per_class, int K,
                           int cap, u32* __restrict__ mask, int* __restrict__ cand,
                           int* __restrict__ ghist, int* __restrict__ gcount,
                           long long* __restrict__ dbg) {
    __shared__ int hist[NBINS];  // radix histogram, then class offsets, then per-class kept
    __shared__ u64 keys[MAXCAND];
    __shared__ int warp_sums[32];
    __shared__ int s_digit, s_above, s_total, s_count, s_len;

    const int img = blockIdx.x, tid = threadIdx.x;
    const long long total = (long long)A * C;
    const TS* sc = scores + (long long)img * total;
    const TB* bx = boxes + (long long)img * A * 4;
    u32* m = mask + (long long)img * MAXCAND * 32;
    long long* stamp = dbg ? dbg + 16ll * img : nullptr;
    if (stamp && tid == 0) stamp[0] = gtime();

    // 1. The coarse histogram of stage 1 gives bucket d holding the cap-th best candidate;
    //    everything in higher buckets is taken. Reset the stage-1/2 buffers for the next call.
    int* g = ghist + (long long)img * NBINS;
    for (int b = tid; b < NBINS; b += NT) hist[b] = g[b];
    if (tid == 0) s_len = gcount[img];
    __syncthreads();
    for (int b = tid; b < NBINS; b += NT) g[b] = 0;
    if (tid == 0) gcount[img] = 0;
    const Cut cut = cut_of(hist, cap, warp_sums, &s_digit, &s_above, &s_total);
    int d = cut.d;
    int remaining = cap - cut.above;
    u64 prefix = 0, pmask = 0;
    const bool whole_bucket = !cut.take_all && hist[d] == remaining;
    const bool compact = cut.in_cut <= SCRATCH_KEYS;
    const int len = s_len;
    __syncthreads();
    if (stamp && tid == 0) stamp[1] = gtime();

    // 2. Exact cut inside bucket d (radix passes over the 64-bit keys), over stage 2's list of
    //    the candidates at or above it when it fitted the scratch, else over all scores.
    const u64* klist = (const u64*)m;
    const ScoreSource<TS> all{sc, score_thr, 0u};
    if (!cut.take_all && !whole_bucket) {
        if (compact) {
            refine(KeySource{klist}, (long long)len, d, remaining, prefix, pmask, hist,
                   warp_sums, &s_digit, &s_above, &s_total);
        } else {
            refine(all, total, d, remaining, prefix, pmask, hist, warp_sums, &s_digit,
                   &s_above, &s_total);
        }
    }
    if (stamp && tid == 0) stamp[2] = gtime();

    // 3. Gather the selected keys (exactly min(count, cap) of them) into shared memory.
    if (tid == 0) s_count = 0;
    __syncthreads();
    if (compact) {
        gather(KeySource{klist}, (long long)len, d, prefix, pmask, keys, &s_count);
    } else {
        gather(all, total, d, prefix, pmask, keys, &s_count);
    }
    __syncthreads();
    const int n = min(s_count, cap);
    if (stamp && tid == 0) stamp[3] = gtime();

    // 4. Bitonic sort, descending (padding keys are 0: below every real key).
    int P = 1;
    while (P < n) P <<= 1;
    for (int i = n + tid; i < P; i += NT) keys[i] = 0ull;
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = tid; i < P; i += NT) {
                int ixj = i ^ j;
                if (ixj > i) {
                    u64 a = keys[i], b = keys[ixj];
                    bool desc = (i & k) == 0;
                    if (desc ? (a < b) : (a > b)) { keys[i] = b; keys[ixj] = a; }
                }
            }
            __syncthreads();
        }
    }
    if (stamp && tid == 0) stamp[4] = gtime();

    // 5. Candidate boxes, scores and classes in order (thread i holds candidate i, n <= NT);
    //    group the candidates by class (class offsets by a block scan of the class counts).
    int ci = -1;
    float4 bi = make_float4(0.f, 0.f, 0.f, 0.f);
    float si = 0.f;
    if (tid < n) {
        u32 flat = 0xFFFFFFFFu - (u32)keys[tid];
        int a = (int)(flat / (u32)C);
        ci = (int)(flat - (u32)a * (u32)C);
        bi = make_float4(load_f(bx, 4ll * a), load_f(bx, 4ll * a + 1), load_f(bx, 4ll * a + 2),
                         load_f(bx, 4ll * a + 3));
        si = load_f(sc, (long long)flat);
    }
    for (int c = tid; c < NBINS; c += NT) hist[c] = 0;
    __syncthreads();
    if (ci >= 0) atomicAdd(&hist[ci], 1);
    __syncthreads();
    {
        const int h0 = hist[2 * tid], h1 = hist[2 * tid + 1];  // NBINS == 2 * NT
        const int incl = block_scan(h0 + h1, warp_sums);       // synchronizes
        hist[2 * tid] = incl - h0 - h1;
        hist[2 * tid + 1] = incl - h1;
    }
    __syncthreads();
    // Members of a class in score order: warps in turn take their places after the earlier
    // warps' (peers within a warp by lane).
    const int lane = tid & 31, warp = tid >> 5;
    const u32 peers = __match_any_sync(0xffffffffu, ci);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    int pos = 0;
    for (int w = 0; w < ((n + 31) >> 5); ++w) {
        if (warp == w) {
            if (ci >= 0) pos = hist[ci] + rank;
            __syncwarp();
            if (ci >= 0 && rank == 0) hist[ci] += __popc(peers);
        }
        __syncthreads();
    }
    const int gend = ci >= 0 ? hist[ci] : 0;  // one past the class's last member
    if (stamp && tid == 0) stamp[5] = gtime();

    // 6. Candidates (score order) and their class groups to global memory for the row and walk
    //    kernels: box, score, class, grouped order, and each candidate's [pos, gend) range.
    int* cw = cand + (long long)img * CAND_WORDS;
    if (tid == 0) cw[0] = n;
    if (ci >= 0) {
        ((float4*)(cw + C_BOX))[tid] = bi;
        ((float*)(cw + C_SCORE))[tid] = si;
        cw[C_CLS + tid] = ci;
        cw[C_MEMB + pos] = tid;
        ((int2*)(cw + C_RANGE))[tid] = make_int2(pos, gend);
    }
    if (stamp && tid == 0) stamp[6] = gtime();
}

// Stage 4, grid (ceil(cap / ROW_WARPS), N), ROW_WARPS warps per block: one warp per candidate i
// builds its suppression row (bit j set when j > i, same class, IoU > threshold) in shared
// memory and stores all 32 words (the walk reads words < ceil(n / 32)).
extern "C" __global__ void __launch_bounds__(ROW_WARPS * 32) nms_rows(
        const int* __restrict__ cand, float iou_thr, u32* __restrict__ mask) {
    __shared__ u32 srow[ROW_WARPS][32];
    const int img = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int i = blockIdx.x * ROW_WARPS + warp;
    const int* cw = cand + (long long)img * CAND_WORDS;
    const int n = cw[0];
    if (i >= n) return;  // whole warps leave together
    srow[warp][lane] = 0u;
    __syncwarp();
    const float4* cb = (const float4*)(cw + C_BOX);
    const float4 bi = cb[i];
    const int2 r = ((const int2*)(cw + C_RANGE))[i];
    for (int p = r.x + 1 + lane; p < r.y; p += 32) {
        const int j = cw[C_MEMB + p];
        if (iou(bi, cb[j]) > iou_thr) atomicOr(&srow[warp][j >> 5], 1u << (j & 31));
    }
    __syncwarp();
    mask[((long long)img * MAXCAND + i) * 32 + lane] = srow[warp][lane];
}

// Stage 5, one warp per image: walks the candidates in score order as nms_image does, jumping
// straight to the next candidate no kept box suppressed. The rows (and classes) of the next
// WALK_AHEAD unsuppressed candidates are loaded together, so one memory latency covers many
// steps; a row whose candidate gets suppressed meanwhile is simply not used.
#define WALK_AHEAD 16
extern "C" __global__ void __launch_bounds__(32) nms_walk(
        const int* __restrict__ cand, const u32* __restrict__ mask, int max_per_class, int K,
        int* __restrict__ out, long long* __restrict__ dbg) {
    __shared__ int kept_of[NBINS];  // kept boxes per class
    const int img = blockIdx.x, lane = threadIdx.x;
    const int* cw = cand + (long long)img * CAND_WORDS;
    const u32* m = mask + (long long)img * MAXCAND * 32;
    int* rec = out + (long long)img * (1 + 6 * K);
    for (int c = lane; c < NBINS; c += 32) kept_of[c] = 0;
    const int n = cw[0];
    __syncwarp();
    const int W = (n + 31) >> 5;
    u32 removed = 0;  // lane w holds bits of candidates 32w .. 32w + 31
    int kept = 0, cur = 0;
    float* obox = (float*)(rec + 1);
    float* oscore = (float*)(rec + 1 + 4 * K);
    int* ocls = rec + 1 + 5 * K;
    const int base = lane << 5;
    // The first unsuppressed candidate at or after `from`, or -1.
    auto next = [&](int from) {
        u32 avail = 0;
        if (base < n) {
            avail = ~removed;
            const int hi = n - base;
            if (hi < 32) avail &= (1u << hi) - 1u;
            const int lo = from - base;
            if (lo >= 32) avail = 0;
            else if (lo > 0) avail &= ~((1u << lo) - 1u);
        }
        const u32 ball = __ballot_sync(0xffffffffu, avail != 0);
        if (!ball) return -1;
        const int wl = __ffs(ball) - 1;
        const u32 wv = __shfl_sync(0xffffffffu, avail, wl);
        return (wl << 5) + __ffs(wv) - 1;
    };
    bool done = false;
    while (!done && kept < K) {
        int idx[WALK_AHEAD];
        u32 row[WALK_AHEAD];
        int cls[WALK_AHEAD];
        int from = cur;
        #pragma unroll
        for (int d = 0; d < WALK_AHEAD; ++d) {
            idx[d] = from >= 0 ? next(from) : -1;
            from = idx[d] >= 0 ? idx[d] + 1 : -1;
        }
        #pragma unroll
        for (int d = 0; d < WALK_AHEAD; ++d) {
            row[d] = idx[d] >= 0 && lane < W ? m[idx[d] * 32 + lane] : 0u;
            cls[d] = idx[d] >= 0 ? cw[C_CLS + idx[d]] : 0;
        }
        #pragma unroll
        for (int d = 0; d < WALK_AHEAD; ++d) {
            const int i = idx[d];
            if (i < 0) { done = true; break; }
            cur = i + 1;
            if ((__shfl_sync(0xffffffffu, removed, i >> 5) >> (i & 31)) & 1u) continue;
            const int c = cls[d];
            if (kept_of[c] >= max_per_class) continue;
            removed |= row[d];
            if (lane == 0) {
                kept_of[c] += 1;
                const float4 b = ((const float4*)(cw + C_BOX))[i];
                obox[4 * kept] = b.x; obox[4 * kept + 1] = b.y;
                obox[4 * kept + 2] = b.z; obox[4 * kept + 3] = b.w;
                oscore[kept] = ((const float*)(cw + C_SCORE))[i];
                ocls[kept] = c + 1;
            }
            __syncwarp();
            if (++kept >= K) break;
        }
    }
    for (int j = kept + lane; j < K; j += 32) {
        obox[4 * j] = 0.f; obox[4 * j + 1] = 0.f; obox[4 * j + 2] = 0.f; obox[4 * j + 3] = 0.f;
        oscore[j] = 0.f;
        ocls[j] = 0;
    }
    if (lane == 0) rec[0] = kept;
    if (dbg && lane == 0) dbg[16ll * img + 7] = gtime();
}

#define NMS_STAGES(TNAME, TS)                                                                 \
    extern "C" __global__ void __launch_bounds__(NT) nms_hist_##TNAME(                        \
        const TS* scores, int A, int C, float score_thr, int* ghist) {                        \
        nms_hist<TS>(scores, A, C, score_thr, ghist);                                         \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(NT) nms_compact_##TNAME(                     \
        const TS* scores, int A, int C, float score_thr, int cap, const int* ghist,           \
        int* gcount, u32* mask) {                                                             \
        nms_compact<TS>(scores, A, C, score_thr, cap, ghist, gcount, mask);                   \
    }
NMS_STAGES(f32, float)
NMS_STAGES(f16, unsigned short)

#define SELECT_NMS(NAME, TB, TS)                                                              \
    extern "C" __global__ void __launch_bounds__(NT) NAME(                                    \
        const TB* boxes, const TS* scores, int A, int C, float score_thr, float iou_thr,      \
        int max_per_class, int K, int cap, u32* mask, int* cand, int* ghist, int* gcount,     \
        long long* dbg) {                                                                     \
        select_nms<TB, TS>(boxes, scores, A, C, score_thr, iou_thr, max_per_class, K, cap,    \
                           mask, cand, ghist, gcount, dbg);                                   \
    }
SELECT_NMS(select_nms_f32_f32, float, float)
SELECT_NMS(select_nms_f32_f16, float, unsigned short)
SELECT_NMS(select_nms_f16_f32, unsigned short, float)
SELECT_NMS(select_nms_f16_f16, unsigned short, unsigned short)
