"""Knowledge distillation in finetuning: the dense network's softened logits join the labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwdnal.distillation import Distillation, soft_target_loss
from hwdnal.errors import UserError
from hwdnal.search import DnalSearch, SearchConfig

TINY = dict(model="resnet20", data="synthetic", input_size=16, train_subset=256,
            test_subset=128, batch_size=64, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
            compile=False)


def test_the_soft_term_is_t_squared_times_the_kl_divergence_of_the_softened_outputs():
    student, teacher = torch.randn(5, 10), torch.randn(5, 10)
    t = 3.0
    p = F.softmax(teacher / t, dim=1)
    q = F.softmax(student / t, dim=1)
    expected = t * t * (p * (p.log() - q.log())).sum(1).mean()
    assert soft_target_loss(student, teacher, t).item() == pytest.approx(expected.item(),
                                                                         rel=1e-5)
    assert soft_target_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_the_blend_is_the_labels_alone_at_0_and_the_teacher_alone_at_1():
    teacher = nn.Linear(4, 3)
    images, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    logits = torch.randn(8, 3)
    hard = F.cross_entropy(logits, labels)
    assert torch.equal(Distillation(teacher, 0.0).loss(logits, images, labels), hard)
    only_teacher = Distillation(teacher, 1.0, 2.0).loss(logits, images, labels)
    assert only_teacher.item() == pytest.approx(
        soft_target_loss(logits, teacher(images), 2.0).item(), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()), "the teacher is frozen"


def test_distilled_finetuning_moves_the_student_towards_the_teacher(tmp_path: Path):
    plain = DnalSearch(SearchConfig(**TINY), tmp_path / "plain").run()
    taught = DnalSearch(SearchConfig(**TINY, distill=1.0), tmp_path / "taught").run()
    assert plain["groups"] == taught["groups"], "distillation changes finetuning only"

    def disagreement(run: str) -> float:
        dense = torch.load(tmp_path / run / "dense.pt", weights_only=False).eval()
        pruned = torch.load(tmp_path / run / "pruned.pt", weights_only=False).eval()
        x = torch.randn(64, 3, 16, 16)
        with torch.no_grad():
            return soft_target_loss(pruned(x), dense(x), 4.0).item()

    assert disagreement("taught") < disagreement("plain")
    assert math.isfinite(taught["pruned"]["accuracy"])


def test_a_distillation_share_outside_0_to_1_is_refused(tmp_path: Path):

    with pytest.raises(UserError, match="--distill is a share between 0 and 1"):
        SearchConfig(**TINY, distill=1.5).validate()
    with pytest.raises(UserError, match="--distill-temperature must be greater than 0"):
        SearchConfig(**TINY, distill_temperature=0).validate()
