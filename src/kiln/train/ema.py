"""An exponential moving average of a model's weights, kept beside the model during training.

Small-data fine-tuning wanders: validation accuracy can move by a point from one epoch to the
next. Evaluating and keeping the average of recent weights instead of the last ones smooths that
path (Polyak averaging). ``torch.optim.swa_utils.AveragedModel`` averages every buffer with
``lerp`` and fails on integer buffers (BERT's ``position_ids``); here floating-point tensors are
averaged and every other tensor is copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``shadow`` holds the average; :meth:`update` folds in the model after each optimizer step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
    first evaluations are not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.shadow = copy.deepcopy(model).eval()
        for param in self.shadow.parameters():
            param.requires_grad_(False)
        # Training and load_state_dict change the buffers in place, so the list holds for the run.
        self._float_buffers = [b for b in self.shadow.buffers() if b.is_floating_point()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def float_buffers(self) -> list[torch.Tensor]:
        """The average's floating-point buffers: batch norm statistics, which each rank updates on its own shard."""
        return self._float_buffers

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._pairs is None:
            # state_dict tensors share storage with the parameters and buffers, and training and
            # load_state_dict change them in place, so the pairing holds for the whole run.
            model_state = model.state_dict()
            self._pairs = [(target, model_state[name].detach()) for name, target in self.shadow.state_dict().items()]
        averaged = [t for t, _ in self._pairs if t.is_floating_point()]
        latest = [src.to(t.dtype) for t, src in self._pairs if t.is_floating_point()]
        if averaged:
            torch._foreach_lerp_(averaged, latest, 1.0 - self.current_decay())
        for target, source in self._pairs:
            if not target.is_floating_point():
                target.copy_(source)
        self.updates += 1
