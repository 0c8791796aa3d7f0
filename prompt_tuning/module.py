"""PromptTuner: the LightningModule that wires a context, the frozen CLIP and an objective.

``logits = logit_scale * normalise(image features) @ normalise(class text features).T``, per prompt set;
predictions average the softmax over sets (a head scores features its own way, `Context.score`). Only the
context's parameters are optimised (SGD, constant warm-up then cosine decay per epoch, as CoOp's Dassl trainer;
or AdamW with a per-step cosine, as Tip-Adapter-F). Class text features are computed once per evaluation
for contexts that do not depend on the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.contexts.base import Context, Outputs, Task
from prompt_tuning.objectives import CrossEntropy, Objective
from prompt_tuning.precision import full_precision


def warmup_cosine(epoch: int, max_epochs: int, warmup_epochs: int, lr: float, warmup_lr: float) -> float:
    """Learning-rate factor of an epoch: ``warmup_lr / lr`` during warm-up, then cosine from 1 over
    ``max_epochs`` (Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=max_epochs)``)."""
    if epoch < warmup_epochs:
        return warmup_lr / lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))


class PromptTuner(pl.LightningModule):
    """Trains and evaluates a prompt context on a frozen CLIP.

    Args:
        clip: the frozen model; it never appears in checkpoints.
        context: the prompt method.
        task: class names and template of the current class set.
        objective: maps `Outputs` and labels to named loss terms; cross-entropy by default.
        gradient_rule: optional ``rule(terms, params, average)`` that sets the gradients (e.g. `ProGrad`);
            training then uses Lightning's manual optimisation. ``average(grads)`` averages a list of gradients
            over the training processes (DDP); a rule applies it to each gradient it computes.
        lr, momentum, weight_decay: SGD settings (CoOp: 0.002, 0.9, 5e-4).
        max_epochs: length of the cosine schedule.
        warmup_epochs, warmup_lr: constant warm-up (CoOp: 1 epoch at 1e-5).
        optimizer: ``sgd`` (CoOp) or ``adamw`` (``eps``, ``weight_decay``; momentum unused).
        eps: AdamW's epsilon (Tip-Adapter-F: 1e-4).
        interval: ``epoch``: the learning rate changes once per epoch (Dassl); ``step``: the warm-up and the
            cosine count optimisation steps (``torch.optim.lr_scheduler.CosineAnnealingLR`` over all steps).
        averaging: averages the context's learned tensors over epochs (PromptSRC's GPA,
            `prompt_tuning.averaging.GaussianPromptAveraging`); its state is checkpointed.
        eval_chunk: most prompts per text pass when evaluating a conditional context (bounds memory).
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        context: Context,
        task: Task,
        objective: Objective | None = None,
        gradient_rule: Callable | None = None,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        max_epochs: int = 200,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        eval_chunk: int = 4096,
        optimizer: str = "sgd",
        eps: float = 1e-8,
        interval: str = "epoch",
        averaging: nn.Module | None = None,
    ):
        super().__init__()
        self.clip = clip
        self.context = context
        self.objective = objective if objective is not None else CrossEntropy()
        self.gradient_rule = gradient_rule
        self.automatic_optimization = gradient_rule is None
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={optimizer!r}: choose sgd or adamw")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval={interval!r}: choose epoch or step")
        self.optimizer_name, self.interval = optimizer, interval
        self.optim = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps)
        self.schedule = dict(max_epochs=max_epochs, warmup_epochs=warmup_epochs, lr=lr, warmup_lr=warmup_lr)
        self.eval_chunk = eval_chunk
        self._eval_text: torch.Tensor | None = None
        self._fixed_text: torch.Tensor | None = None  # class features of a context with nothing to learn
        self.averaging = averaging
        if averaging is not None:
            averaging.attach(context)
        self.set_task(task)

    # ------------------------------------------------------------------------------------------ class sets
    def set_task(self, task: Task) -> None:
        """Point the context, the objective and the metrics at another class set."""
        self.task = task
        self._fixed_text = None
        self.context.set_task(self.clip, task)
        self.objective.set_task(self.clip, task)
        n = len(task.classnames)
        self.acc = MulticlassAccuracy(num_classes=n, average="micro").to(self.clip.device)
        self.macro_acc = MulticlassAccuracy(num_classes=n, average="macro").to(self.clip.device)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The context's learned parameters (the only ones optimised)."""
        return [p for p in self.context.parameters() if p.requires_grad]

    @property
    def trainable(self) -> bool:
        """The method has parameters to optimise (gradient training runs)."""
        return bool(self.trainable_parameters())

    @property
    def learns(self) -> bool:
        """The method learns from the training set at all (by gradients or by `Context.fit`); false for
        zero-shot, whose numbers do not depend on the shots."""
        return self.trainable or self.context.fits

    # ---------------------------------------------------------------------------------------------- forward
    def image_features(self, batch: dict) -> torch.Tensor:
        """Unnormalised image features ``(B, d)`` of a batch (precomputed ``features`` or raw ``image``)."""
        if "features" in batch:
            return batch["features"]
        return self.clip.encode_images(batch["image"], normalize=False, prompts=self.context.visual_prompts())

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> Outputs:
        """Score images (unnormalised features ``(B, d)``) with the context; pass ``text_features``
        ``(S, C, d)`` to reuse class features."""
        return self.context.score(self.clip, image_features, text_features)

    @staticmethod
    def predict_proba(logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)``: the softmax averaged over prompt sets / samples (at least fp32)."""
        with full_precision(logits):
            return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1).mean(dim=0)

    def loss_terms(self, outputs: Outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The objective's named terms, plus the context's auxiliary loss as ``aux``."""
        with full_precision(outputs.logits):  # softmax, entropy and distances in fp32 (prompt_tuning.precision)
            terms = dict(self.objective(outputs, labels))
        if outputs.aux_loss is not None:
            terms["aux"] = outputs.aux_loss
        return terms

    # ------------------------------------------------------------------------------------------- training
    def frozen_image_features(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised features of the batch through the unprompted image tower: the batch's own features when the
        context leaves the tower alone, the feature cache's (``frozen``) when the dataset carries them, else a
        second, unprompted pass (no gradient)."""
        if self.context.frozen_image_tower:
            frozen = image_features
        elif "frozen" in batch:
            frozen = batch["frozen"]
        else:
            frozen = self.clip.encode_images(batch["image"], normalize=False)
        return torch.nn.functional.normalize(frozen.detach().float(), dim=-1)

    def training_outputs(self, batch: dict) -> Outputs:
        """The forward pass of a training batch, with what the objective asks for beside the logits."""
        image_features = self.image_features(batch)
        outputs = self(image_features)
        if self.objective.needs_frozen_image_features:
            outputs.frozen_image_features = self.frozen_image_features(batch, image_features)
        return outputs

    @property
    def world_size(self) -> int:
        """Processes training together (Lightning DDP); 1 without a distributed trainer."""
        return self._trainer.world_size if self._trainer is not None else 1

    def _share(self, n: int) -> float:
        """``n * world / global batch``: scaling each process's mean loss by its share of the global batch makes
        the gradient averaged over processes the gradient of the global batch's mean (exact for the losses
        here: means over images plus terms that do not depend on them), even for an uneven last batch."""
        total = self.trainer.strategy.reduce(torch.tensor(float(n), device=self.device), reduce_op="sum")
        return n * self.world_size / float(total)

    def average_gradients(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The mean of each gradient over the training processes (unchanged in a single process); for gradient
        rules, which combine the gradients of several terms themselves."""
        if self.world_size == 1:
            return list(grads)
        return [g if g is None else self.trainer.strategy.reduce(g, reduce_op="mean") for g in grads]

    def on_train_start(self) -> None:
        if self.gradient_rule is not None and self.world_size > 1:  # the rule averages its own gradients
            self.trainer.strategy.model.require_backward_grad_sync = False

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        outputs = self.training_outputs(batch)
        terms = self.loss_terms(outputs, labels)
        loss = sum(terms.values())
        share = self._share(len(labels)) if self.world_size > 1 else 1.0
        if self.gradient_rule is not None:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            scaled = terms if share == 1.0 else {k: v * share for k, v in terms.items()}
            self.gradient_rule(scaled, self.trainable_parameters(), average=self.average_gradients)
            optimizer.step()
        n = len(labels)
        acc = (self.predict_proba(outputs.logits).argmax(-1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", acc, prog_bar=True, batch_size=n)
        if len(terms) > 1:
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
        return loss if share == 1.0 else loss * share

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.automatic_optimization and self.interval == "step":  # manual optimisation steps its schedule
            self.lr_schedulers().step()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.interval == "epoch":
            self.lr_schedulers().step()
        if self.averaging is not None:  # before the epoch's checkpoint is written
            self.averaging.epoch_end(self.context, self.current_epoch, self.schedule["max_epochs"])

    def configure_optimizers(self):
        o, params = self.optim, self.trainable_parameters()
        if self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=o["lr"], eps=o["eps"], weight_decay=o["weight_decay"])
        else:
            optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        schedule = dict(self.schedule)
        if self.interval == "step":  # the same schedule counted in optimisation steps
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            per_epoch = max(1, steps // schedule["max_epochs"])
            schedule.update(max_epochs=steps, warmup_epochs=schedule["warmup_epochs"] * per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_cosine(e, **schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}

    # ----------------------------------------------------------------------------------------- evaluation
    def _start_eval(self) -> None:
        self.acc.reset()
        self.macro_acc.reset()
        self._eval_text = None
        if self.context.conditional or self.context.stochastic:
            return  # class features depend on the image or on fresh samples: computed per batch
        if self._fixed_text is not None:  # zero-shot: computed once in total for this class set
            self._eval_text = self._fixed_text
            return
        with torch.no_grad():
            self._eval_text = self.context.text_features(self.clip)[0]  # once per evaluation
        if not self.trainable:
            self._fixed_text = self._eval_text

    def _eval_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        if not self.context.conditional:
            return self(image_features, self._eval_text).logits
        per = max(1, self.eval_chunk // (len(self.task.classnames) * self.context.sets_per_image))  # images/pass
        return torch.cat([self(chunk).logits for chunk in image_features.split(per)], dim=1)

    def _eval_step(self, batch: dict, stage: str) -> None:
        with torch.no_grad():
            probs = self.predict_proba(self._eval_logits(self.image_features(batch)))
        self.acc.update(probs, batch["label"])
        self.macro_acc.update(probs, batch["label"])
        self.log(f"{stage}/acc", self.acc, batch_size=len(batch["label"]))
        self.log(f"{stage}/macro_acc", self.macro_acc, batch_size=len(batch["label"]))

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_text = None

    def on_test_epoch_end(self) -> None:
        self._eval_text = None
