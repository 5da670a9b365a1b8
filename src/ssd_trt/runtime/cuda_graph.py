"""Old home of the CUDA-graph helpers; they live in runtime/cuda.py, the one CUDA module."""

from __future__ import annotations

from .cuda import CaptureFailed, CudaError, GraphPolicy, capture_graph, check, cudart, error_name

__all__ = ["CaptureFailed", "CudaError", "GraphPolicy", "capture_graph", "check", "cudart",
           "error_name"]  # fmt: skip
