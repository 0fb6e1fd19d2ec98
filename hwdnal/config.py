"""A search's configuration: its options, their defaults (the CLI takes them from here)
and their limits. Torch-free, so that `hwdnal --help` stays instant."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hwdnal.budget import parse_budget
from hwdnal.errors import UserError
from hwdnal.gating import SOFT_FLOOR

#: numeric options: (flag, smallest value, whether the smallest is allowed); None is unset
OPTION_LIMITS = {
    "input_size": ("--input-size", 1, True),
    "train_subset": ("--train-subset", 1, True),
    "test_subset": ("--test-subset", 1, True),
    "epochs_weights": ("--epochs-weights", 0, True),
    "epochs_arch": ("--epochs-arch", 1, True),
    "epochs_finetune": ("--epochs-finetune", 0, True),
    "batch_size": ("--batch-size", 1, True),
    "lr": ("--lr", 0, False),
    "finetune_lr": ("--finetune-lr", 0, False),
    "arch_lr": ("--arch-lr", 0, False),
    "lambda_a": ("--lambda-a", 0, True),
    "channel_step": ("--channel-step", 1, True),
    "latency_rate": ("--latency-rate", 0, True),
    "distill": ("--distill", 0, True),
    "distill_temperature": ("--distill-temperature", 0, False),
}


#: options with a fixed set of values: (flag, field, allowed values; the first is the default)
CHOICE_FIELDS = (
    ("--arch-optimizer", "arch_optimizer", ("adam", "shared-adam", "sgd")),
    ("--arch-batchnorm", "arch_batchnorm", ("running", "batch")),
    ("--latency-control", "latency_control", ("switch", "dual")),
    ("--latency-switch-on", "latency_switch_on", ("mask", "soft")),
    ("--arch-ends-on", "arch_ends_on", ("best", "last")),
    ("--latency-gradient", "latency_gradient", ("secant", "local")),
)


def check_number(flag: str, value: float, minimum: float, inclusive: bool = True) -> None:
    """Refuse ``value`` below ``minimum`` (or equal to it when not ``inclusive``) or not finite."""
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f"at least {minimum}" if inclusive else f"greater than {minimum}"
        raise UserError(f"{flag} must be {bound}, got {value}")


@dataclass
class SearchConfig:
    """Everything a search is asked to do; its defaults are the CLI's, and config.json holds
    its fields in this order."""

    model: str = "resnet20"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    input_size: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    #: leave out (and count) the image files of an imagefolder data set that cannot be read
    skip_bad_images: bool = False
    epochs_weights: int = 4
    epochs_arch: int = 2
    epochs_finetune: int = 3
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.02
    weight_decay: float = 5e-4
    #: the gate parameters' learning rate (None: with Adam, 3·gate_init over the stage's
    #: steps, so that a gate pushed shut all along crosses 0 a third of the way in, however
    #: long the stage; 0.2 with SGD)
    arch_lr: float | None = None
    #: "adam" moves each s by about the lr in the direction its loss terms agree on, so a
    #: channel closes when the latency term outweighs what the cross-entropy says it is
    #: worth, whatever the gradients' scale; "shared-adam" shares one second moment among
    #: all gates (hwdnal/gate_optimizer.py), so that gates pushed harder move faster;
    #: "sgd" (momentum 0.9) is the earlier recipe
    arch_optimizer: str = "adam"
    #: Adam's β1 for the gates: momentum carries closing gates on after the network is
    #: under its budget
    arch_momentum: float = 0.0
    #: BatchNorm in the architecture stage: "running" (the dense network's statistics,
    #: frozen: the loss sees how wide a group is) or "batch" (batch statistics, which
    #: normalise a group's scale away)
    arch_batchnorm: str = "running"
    #: s at the start of the architecture stage (3: every gate open, sigmoid(3) = 0.95)
    gate_init: float = 3.0
    #: the least a soft gate passes on, so that a closed gate still gets a gradient
    gate_floor: float = SOFT_FLOOR
    #: the latency term's gradient: "secant" (a channel's average cost over the LUT's
    #: range) or "local" (the LUT's slope where the counts are: flat at full width on CPUs)
    latency_gradient: str = "secant"
    lambda_a: float = 0.1
    seed: int = 0
    weights: str | None = None
    #: read a --weights file that is a whole pickled module (it can run code from the file)
    trust_weights_pickle: bool = False
    channels_last: bool = True
    device: str = "cpu"
    target: str = "cpu"
    #: the agent's URL when the target's device is elsewhere (overrides the target file's)
    remote: str | None = None
    budget: str | None = None
    lut: str | None = None
    force_lut: bool = False
    #: a reused LUT whose dense prediction is off the device by more than this is corrected
    lut_tolerance: float = 0.10
    #: keep each group's channel count a multiple of this (None: the target's preference)
    channel_step: int | None = None
    #: the latency weight's dual-ascent step per unit of excess (None: 10 over the
    #: stage's steps, so that the weight reaches the same size by the end however long
    #: the stage; 20 overshot to 47% of the budget, 10 landed at 97%: docs/arch-stage.md)
    latency_rate: float | None = None
    #: how the latency term's weight follows the excess: "dual" (dual ascent at
    #: ``latency_rate``) or "switch" (10 while over the budget, 0 under it)
    latency_control: str = "switch"
    #: what the switch judges: "mask" (the open gates' architecture) or "soft"
    latency_switch_on: str = "mask"
    #: which architecture a budgeted stage ends on: "best" (the late one with the highest
    #: LUT latency under the aim) or "last" (the last step's, wherever the switch left it)
    arch_ends_on: str = "best"
    compile: bool = True
    #: mixed precision of the forward passes: "auto" (bf16 on a GPU that has it, else
    #: off), "bf16" or "off"; the CPU trains in full precision unless "bf16" is asked for
    amp: str = "auto"
    #: compile the training graphs with torch.compile (slow to start, faster per step)
    torch_compile: bool = False
    #: under torchrun on GPUs: BatchNorm statistics over the global batch, not each rank's
    sync_batchnorm: bool = False
    #: finetuning learns from the dense network's softened logits with this share α
    #: (0: from the labels alone)
    distill: float = 0.0
    distill_temperature: float = 4.0
    #: a supernet's candidate blocks per searchable layer, kernel x expansion ("3x3,5x6");
    #: None: the model's own (ProxylessNAS's k{3,5,7} x e{3,6})
    candidates: str | None = None

    def validate(self) -> None:
        """Every option in range and every choice known (one line naming the option), before
        anything is touched. The CLI calls it; the library does not, so that scripts and
        benchmarks may run what the CLI forbids (an architecture stage of 0 epochs)."""
        for name, (flag, minimum, inclusive) in OPTION_LIMITS.items():
            value = getattr(self, name)
            if value is not None:
                check_number(flag, value, minimum, inclusive)
        if self.distill > 1:
            raise UserError(f"--distill is a share between 0 and 1, got {self.distill}")
        for flag, name, allowed in CHOICE_FIELDS:
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"{flag} must be {' or '.join(allowed)}, got '{value}'")
        if not math.isfinite(self.gate_init):
            raise UserError(f"--gate-init must be a finite number, got {self.gate_init}")
        if self.candidates is not None:
            from hwdnal.models import parse_candidates_for

            parse_candidates_for(self.model, self.candidates)  # imports torch: only here
        if self.budget is not None:
            parse_budget(self.budget)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["trust_weights_pickle"]  # a permission for this invocation, not a setting
        return data
