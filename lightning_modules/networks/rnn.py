"""Recurrent layers that behave the same under every precision the trainers use."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LSTM(nn.LSTM):
    """``nn.LSTM`` (same arguments, parameters and state-dict keys) that runs in float32 outside CPU
    autocast: oneDNN has no bf16 LSTM on CPUs without AVX-512 BF16 ("could not create a primitive
    descriptor for the LSTM forward propagation primitive"), so a ``bf16-mixed`` run on such a CPU
    would stop at the first step. Under CUDA autocast it runs as ``nn.LSTM`` does.

    Input / output as ``nn.LSTM`` (``batch_first`` as constructed); under CPU autocast the output
    is float32.
    """

    def forward(self, input: Tensor, hx=None):  # noqa: A002 (nn.LSTM's argument name)
        if input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                hx = None if hx is None else tuple(h.float() for h in hx)
                return super().forward(input.float(), hx)
        return super().forward(input, hx)
