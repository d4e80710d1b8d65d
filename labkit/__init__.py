"""labkit: a hands-on kit for multi-node LLM inference with Ray Serve and vLLM.

Nothing happens at import time: heavy dependencies (ray, vllm, matplotlib) are imported inside
the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from labkit.errors import LabkitError

__all__ = ["LabkitError", "__version__"]
