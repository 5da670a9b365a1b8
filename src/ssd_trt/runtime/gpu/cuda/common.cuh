// Shared by the fast path's kernels: short type names and float16 as raw bits.
// kernels.py compiles common.cuh + preprocess.cu + nms.cu as one NVRTC program and passes the
// sizes that Python also uses (NT, MAXCAND, NBINS, ROW_WARPS, CAND_WORDS) as -D macros, so each
// constant has one home: kernels.py.
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

// float16 as raw bits: avoids depending on cuda_fp16.h being reachable by NVRTC.
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
__device__ __forceinline__ float load_f(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f(const unsigned short* p, long long i) { return h2f(p[i]); }
__device__ __forceinline__ void store_f(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f(unsigned short* p, long long i, float v) { p[i] = f2h(v); }
