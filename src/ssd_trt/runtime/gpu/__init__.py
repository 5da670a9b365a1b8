"""GPU fast path: NVRTC kernels (cuda.core) around ONNX Runtime's CUDA execution provider."""
