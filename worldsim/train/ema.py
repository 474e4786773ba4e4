"""Exponential moving average of a model's weights (the weights that get exported and served).

Full (unsharded) fp32 copies of the trainable parameters: ema <- decay * ema + (1 - decay) * w after each
optimizer step of the model. Before ``start`` the EMA simply follows the weights (Self Forcing starts its EMA at
step 200).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, start: int = 0):
        self.decay, self.start = decay, start
        self.shadow = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().clone()
                       for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start else 0.0
        for n, p in model.named_parameters():
            if n in self.shadow:
                w = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards: gather (costly, correct)
                self.shadow[n].lerp_(w.detach().float(), 1.0 - decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict with EMA values for the averaged parameters (buffers as they are)."""
        full = {}
        for n, t in model.state_dict().items():
            v = self.shadow.get(n, t)
            full[n] = v.full_tensor() if hasattr(v, "full_tensor") else v  # FSDP2 buffers/params -> full tensors
        return full

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for n, v in self.shadow.items():
            v.copy_(tensors[n])
