"""Knowledge distillation for finetuning: the dense network teaches the pruned one.

The pruned network starts from the dense network's weights but with channels removed.
During finetuning its logits are pulled towards the dense network's softened logits
(Hinton et al., 2015) as well as towards the labels:

    loss = (1 - α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))

T² keeps the soft term's gradient on the same scale as the cross-entropy's whatever T is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Distillation:
    teacher: nn.Module
    #: α, the share of the soft term (0: plain cross-entropy, 1: the teacher alone)
    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        self.teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def loss(self, logits: torch.Tensor, images: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        """The blended loss for a student's ``logits`` on ``images``."""
        hard = F.cross_entropy(logits, labels)
        if self.weight == 0:
            return hard
        with torch.no_grad():
            taught = self.teacher(images).float()
        soft = soft_target_loss(logits, taught, self.temperature)
        return (1 - self.weight) * hard + self.weight * soft


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student / temperature, dim=1),
                    F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature**2
