"""The private torch APIs tunelab relies on, named in one place. tests/test_compat.py fails when a
torch release changes any of them.

- `torch._foreach_norm`: every gradient's norm in one fused call. The public
  `torch.nn.utils.get_total_norm` computes the same total but regroups the tensors by device and
  dtype on every call: twice the time of an unclipped optimizer step's measurement (a model lives
  on one device).
"""

from __future__ import annotations

import torch

__all__ = ["tensor_norms"]


def tensor_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor (0-dim tensors, one per input), in one fused call."""
    return list(torch._foreach_norm(tensors))
