"""Integrations of cujit's ops into other libraries' models; each submodule needs its library (an optional extra).

- :mod:`cujit.integrations.transformers`: ``patch(model)`` puts cujit's RMSNorm, gated activations and rotary
  embedding into a Hugging Face transformers model for inference (``pip install "cujit[transformers]"``).
"""

from __future__ import annotations

__all__: list[str] = []
