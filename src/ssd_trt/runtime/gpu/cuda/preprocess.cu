// Preprocess: bilinear resize of uint8 HWC frames as cv2.resize INTER_LINEAR does, BGR->RGB,
// scale/offset, NCHW float32 or float16 out (see kernels.py for the launch shape). Also from NV12
// decoder surfaces, converted to RGB in the same pass (preprocess_nv12_*).

// cv2.resize INTER_LINEAR source coordinate and 11-bit weights for one output index.
__device__ __forceinline__ void linear_tap(int d, int dst, int src, int& s0, int& s1, int& w0,
                                           int& w1) {
    double inv = (double)dst / (double)src;
    float f = (float)__dadd_rn(__dmul_rn((double)d + 0.5, 1.0 / inv), -0.5);  // no FMA: as cv2
    int s = (int)floorf(f);
    f -= (float)s;
    if (s < 0) { f = 0.f; s = 0; }
    if (s >= src - 1) { f = 0.f; s = src - 1; }
    s0 = s;
    s1 = min(s + 1, src - 1);
    w0 = __float2int_rn((1.f - f) * 2048.f);
    w1 = __float2int_rn(f * 2048.f);
}

// meta holds 4 int64 per image: byte offset of the frame in `frames`, height, width, unused.
template <typename Out>
__device__ void preprocess(const u8* __restrict__ frames, const long long* __restrict__ meta,
                           Out* __restrict__ out, int out_h, int out_w, float scale,
                           float offset, int swap_rb) {
    int n = blockIdx.y;
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= out_h * out_w) return;
    int y = p / out_w, x = p - y * out_w;
    const u8* img = frames + meta[4 * n];
    int h = (int)meta[4 * n + 1], w = (int)meta[4 * n + 2];
    int y0, y1, b0, b1, x0, x1, a0, a1;
    linear_tap(y, out_h, h, y0, y1, b0, b1);
    linear_tap(x, out_w, w, x0, x1, a0, a1);
    const u8* r0 = img + (long long)y0 * w * 3;
    const u8* r1 = img + (long long)y1 * w * 3;
    long long plane = (long long)out_h * out_w;
    Out* o = out + (long long)n * 3 * plane + p;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        // The same integer arithmetic as OpenCV's fixed-point horizontal + vertical passes.
        int s0 = r0[x0 * 3 + c] * a0 + r0[x1 * 3 + c] * a1;
        int s1 = r1[x0 * 3 + c] * a0 + r1[x1 * 3 + c] * a1;
        int v = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2;
        int oc = swap_rb ? 2 - c : c;
        store_f(o, oc * plane, __fadd_rn(__fmul_rn((float)min(v, 255), scale), offset));
    }
}

extern "C" __global__ void preprocess_f32(const u8* frames, const long long* meta, float* out,
                                          int out_h, int out_w, float scale, float offset,
                                          int swap_rb) {
    preprocess<float>(frames, meta, out, out_h, out_w, scale, offset, swap_rb);
}
extern "C" __global__ void preprocess_f16(const u8* frames, const long long* meta,
                                          unsigned short* out, int out_h, int out_w, float scale,
                                          float offset, int swap_rb) {
    preprocess<unsigned short>(frames, meta, out, out_h, out_w, scale, offset, swap_rb);
}

// ---- NV12 (decoder surfaces) -> network input, in one pass.
// meta holds NV12_META int64 per image: luma pointer, chroma pointer (interleaved U,V, one pair
// per 2x2 block), pitch in bytes of both planes, height, width, colour matrix index
// (colour.MATRICES), full-range flag, unused. coef is colour.coefficient_table(): COEF_FIELDS
// ints (YuvCoefficients' fields) per row, row = matrix index * 2 + full range.

// One source pixel to 8-bit B, G, R: colour.yuv_to_bgr's fixed-point steps (swscale's, so the
// bytes OpenCV's decode gives): 3-bit promotion, 16-bit multiplies keeping the high half.
__device__ __forceinline__ int high16(int a, int b) { return (a * b) >> 16; }
__device__ __forceinline__ void nv12_bgr(const u8* luma, const u8* chroma, long long pitch, int y,
                                         int x, const int* c, int bgr[3]) {
    int ys = high16(((int)luma[(long long)y * pitch + x] << 3) - c[0], c[1]);
    const u8* uv = chroma + (long long)(y >> 1) * pitch + (x & ~1);
    int u = ((int)uv[0] << 3) - CHROMA_OFFSET, v = ((int)uv[1] << 3) - CHROMA_OFFSET;
    bgr[0] = min(max(ys + high16(u, c[5]), 0), 255);
    bgr[1] = min(max(ys + high16(u, c[3]) + high16(v, c[4]), 0), 255);
    bgr[2] = min(max(ys + high16(v, c[2]), 0), 255);
}

// Each of the four bilinear taps is converted, then blended with the integer weights of the
// packed kernel above: the same bytes as converting the whole frame, then cv2.resize.
template <typename Out>
__device__ void preprocess_nv12(const long long* __restrict__ meta, const int* __restrict__ coef,
                                Out* __restrict__ out, int out_h, int out_w, float scale,
                                float offset, int swap_rb) {
    int n = blockIdx.y;
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= out_h * out_w) return;
    int y = p / out_w, x = p - y * out_w;
    const long long* m = meta + NV12_META * n;
    const u8* luma = (const u8*)m[0];
    const u8* chroma = (const u8*)m[1];
    long long pitch = m[2];
    int h = (int)m[3], w = (int)m[4];
    const int* c = coef + (m[5] * 2 + (m[6] != 0)) * COEF_FIELDS;
    int y0, y1, b0, b1, x0, x1, a0, a1;
    linear_tap(y, out_h, h, y0, y1, b0, b1);
    linear_tap(x, out_w, w, x0, x1, a0, a1);
    int p00[3], p01[3], p10[3], p11[3];
    nv12_bgr(luma, chroma, pitch, y0, x0, c, p00);
    nv12_bgr(luma, chroma, pitch, y0, x1, c, p01);
    nv12_bgr(luma, chroma, pitch, y1, x0, c, p10);
    nv12_bgr(luma, chroma, pitch, y1, x1, c, p11);
    long long plane = (long long)out_h * out_w;
    Out* o = out + (long long)n * 3 * plane + p;
    #pragma unroll
    for (int k = 0; k < 3; ++k) {
        int s0 = p00[k] * a0 + p01[k] * a1;
        int s1 = p10[k] * a0 + p11[k] * a1;
        int v = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2;
        int oc = swap_rb ? 2 - k : k;
        store_f(o, oc * plane, __fadd_rn(__fmul_rn((float)min(v, 255), scale), offset));
    }
}

extern "C" __global__ void preprocess_nv12_f32(const long long* meta, const int* coef,
                                               float* out, int out_h, int out_w, float scale,
                                               float offset, int swap_rb) {
    preprocess_nv12<float>(meta, coef, out, out_h, out_w, scale, offset, swap_rb);
}
extern "C" __global__ void preprocess_nv12_f16(const long long* meta, const int* coef,
                                               unsigned short* out, int out_h, int out_w,
                                               float scale, float offset, int swap_rb) {
    preprocess_nv12<unsigned short>(meta, coef, out, out_h, out_w, scale, offset, swap_rb);
}
