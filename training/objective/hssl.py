"""The HSSL objective over network outputs: targets, centring, K heads (method §3, §5).

- HSSL: every head's teacher global output is the target of the student base's [CLS]
  (L_cls1, base ← head) and of the student head itself (L_cls2, head ← head); with K heads each
  term is averaged over heads (1/K weighting, the joint search of method §5).
- Baseline (no head): the teacher base's [CLS] is the target of the student base's [CLS].
- ``masking=False`` is the DINO-style variant: no masked-patch term.
- ``global_targets="sinkhorn"`` [recon option] replaces centre + softmax for the global terms
  with Sinkhorn-Knopp targets over the views of the batch; ``koleo_weight`` adds DINOv2's KoLeo
  term on the student base's global features. Both default off (the faithful objective).
Centres (one per head global, or one for the baseline [CLS], plus one for base patches) are
updated after the loss from the raw teacher logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training.model.network import NetworkOutput
from training.objective.losses import (
    center_update,
    global_loss,
    koleo_loss,
    patch_loss,
    sinkhorn_targets,
    target_probs,
    weighted_total,
)
from training.recipe import GLOBAL_TARGETS


@dataclass
class LossParts:
    total: Tensor
    cls1: list[Tensor]  # per head (baseline: the one [CLS] loss)
    cls2: list[Tensor]  # per head (baseline: empty)
    mim: Tensor | None
    koleo: Tensor | None = None

    def scalars(self) -> dict[str, float]:
        """The terms as floats, fetched from the device in one transfer."""
        names, values = ["loss"], [self.total.detach()]
        if self.cls1:
            names.append("loss_cls1")
            values.append(torch.stack(self.cls1).detach().mean())
        if self.cls2:
            names.append("loss_cls2")
            values.append(torch.stack(self.cls2).detach().mean())
        if self.mim is not None:
            names.append("loss_mim")
            values.append(self.mim.detach())
        if self.koleo is not None:
            names.append("loss_koleo")
            values.append(self.koleo.detach())
        return dict(zip(names, torch.stack(values).float().tolist(), strict=True))


class HSSLObjective(nn.Module):
    """Loss and centre state of one run. Views are stacked on the batch axis (V*B)."""

    def __init__(
        self,
        num_heads: int,
        out_dim: int,
        *,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        masking: bool = True,
        lambda_cls: float = 1.0,
        lambda_mim: float = 1.0,
        num_views: int = 2,
        global_targets: str = "centre",
        koleo_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if global_targets not in GLOBAL_TARGETS:
            raise ValueError(
                f"global_targets must be one of {GLOBAL_TARGETS}, got {global_targets!r}"
            )
        self.global_targets = global_targets
        self.koleo_weight = koleo_weight
        self.num_heads = num_heads
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.masking = masking
        self.lambda_cls = lambda_cls
        self.lambda_mim = lambda_mim
        self.num_views = num_views
        self.register_buffer("global_centers", torch.zeros(max(num_heads, 1), 1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, out_dim))

    def teacher_globals(self, teacher: NetworkOutput) -> list[Tensor]:
        """Raw teacher global logits, one tensor per centre (per head, or the base [CLS])."""
        return list(teacher.head_logits) if self.num_heads else [teacher.base_logits]

    def targets(self, logits: Tensor, center: Tensor, teacher_temp: float) -> list[Tensor]:
        return list(target_probs(logits.float(), center, teacher_temp).chunk(self.num_views))

    def global_target_probs(self, k: int, logits: Tensor, teacher_temp: float) -> Tensor:
        """The probabilities global term ``k`` would use as targets for these teacher logits
        (all views stacked; also what the collapse diagnostics measure)."""
        if self.global_targets == "sinkhorn":
            return sinkhorn_targets(logits, teacher_temp)
        center = self.global_centers[k].to(logits.device)
        return target_probs(logits.float(), center, teacher_temp)

    def forward(
        self,
        student: NetworkOutput,
        teacher: NetworkOutput,
        masks: Tensor | None,
        teacher_temp: float,
    ) -> LossParts:
        views = self.num_views
        base_student = list(student.base_logits.float().chunk(views))
        cls1, cls2 = [], []
        for k, logits in enumerate(self.teacher_globals(teacher)):
            targets = list(self.global_target_probs(k, logits, teacher_temp).chunk(views))
            cls1.append(global_loss(targets, base_student, self.student_temp))
            if self.num_heads:
                head_student = list(student.head_logits[k].float().chunk(views))
                cls2.append(global_loss(targets, head_student, self.student_temp))
        mim = None
        if self.masking:
            if masks is None:
                raise ValueError("the masked-patch loss needs the crops' masks")
            patch_targets = self.targets(teacher.patch_logits, self.patch_center, teacher_temp)
            flat = masks.flatten(1).chunk(views)
            mim = patch_loss(
                patch_targets,
                list(student.patch_logits.float().chunk(views)),
                flat,
                self.student_temp,
            )
        total = weighted_total(cls1, cls2, mim, self.lambda_cls, self.lambda_mim)
        koleo = None
        if self.koleo_weight > 0:
            chunks = student.base_features.chunk(views)
            koleo = torch.stack([koleo_loss(c) for c in chunks]).mean()
            total = total + self.koleo_weight * koleo
        return LossParts(total, cls1, cls2, mim, koleo)

    @torch.no_grad()
    def update_centers(self, teacher: NetworkOutput) -> None:
        """c ← m·c + (1−m)·mean(raw teacher logits), averaged over ranks under DDP."""
        for k, logits in enumerate(self.teacher_globals(teacher)):
            self.global_centers[k] = center_update(
                self.global_centers[k], _all_mean(logits), self.center_momentum
            )
        if self.masking:
            self.patch_center.copy_(
                center_update(
                    self.patch_center, _all_mean(teacher.patch_logits), self.center_momentum
                )
            )


def _all_mean(logits: Tensor) -> Tensor:
    """This rank's mean over all leading dims, averaged over ranks (1 x K)."""
    mean = logits.float().reshape(-1, logits.shape[-1]).mean(0, keepdim=True)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return mean
