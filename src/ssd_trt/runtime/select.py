"""Backend names and the ``auto`` choice: kept for imports; the registry (runtime/registry.py)
is where backends are now described, checked and opened."""

from __future__ import annotations

from .ort import available_providers
from .registry import (
    ALIASES,
    BACKEND_HELP,
    BACKENDS,
    ORT_DEVICE,
    candidates,
    canonical_backend,
    has_module,
    tensorrt_usable,
    unusable,
)

__all__ = [
    "ALIASES",
    "BACKENDS",
    "BACKEND_HELP",
    "ORT_DEVICE",
    "available_providers",
    "candidates",
    "canonical_backend",
    "has_module",
    "tensorrt_usable",
    "unusable",
]
