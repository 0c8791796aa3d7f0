"""PromptTuner: the LightningModule that trains and evaluates any method on a frozen CLIP.

A context scores images against its class prompts (``logit_scale * normalise(img) @ normalise(txt).T`` per prompt
set), a head scores frozen features its own way; predictions average the softmax over sets. Only the method's
learned tensors are optimised (an optimizer and a schedule named by the config; CoOp's Dassl recipe by default:
SGD, a constant warm-up, then a cosine per epoch). Class features are computed once per evaluation for methods
whose classes depend neither on the image nor on random draws. Logits, loss terms and metrics are fp32 whatever
the trainer's precision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.core.errors import UserError
from prompt_tuning.core.precision import full_precision
from prompt_tuning.methods.averaging import Averaging
from prompt_tuning.methods.base import Method, Outputs, Task
from prompt_tuning.methods.classifier import zero_shot_classifier
from prompt_tuning.methods.gradients import GradientRule
from prompt_tuning.methods.objectives import CrossEntropy, Objective
from prompt_tuning.runs import inputs as objective_inputs
from prompt_tuning.runs.schedules import Schedule, WarmupCosine

Optimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class PercentAccuracy(MulticlassAccuracy):
    """Accuracy in percent, the unit of ``result.json`` and the papers: the logs say ``test/acc 81.2`` too."""

    def compute(self) -> torch.Tensor:
        return 100.0 * super().compute()


class NonFiniteLoss(UserError):
    """The training loss is not finite: the run stops (no result is written)."""

    def __init__(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int, step: int):
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        super().__init__(f"the training loss is {float(loss)} at epoch {epoch + 1}, step {step + 1} ({shown}): the "
                         "run stops and writes no result; lower optim.lr, or look at the data and the method's "
                         "settings")


def sgd(lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4) -> Optimizer:
    """CoOp's optimizer (Dassl's SGD defaults), as a factory of the learned tensors."""
    return functools.partial(torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay)


class PromptTuner(pl.LightningModule):
    """Trains and evaluates a method on a frozen CLIP.

    Args:
        clip: the frozen model; it never appears in checkpoints.
        method: the prompt method or head (`prompt_tuning.methods.base.Method`).
        task: class names and template of the current class set.
        objective: maps `Outputs`, the labels and the `Inputs` it needs to named loss terms; cross-entropy by
            default.
        gradient_rule: optional ``rule(terms, params, average)`` that sets the gradients (e.g. `ProGrad`);
            training then uses Lightning's manual optimisation. ``average(grads)`` averages a list of gradients
            over the training processes (DDP); a rule applies it to each gradient it computes.
        optimizer: ``optimizer(params)`` builds the optimizer (default: CoOp's SGD, lr 0.002, momentum 0.9,
            weight decay 5e-4).
        schedule: the learning-rate schedule (default: CoOp's warm-up and cosine per epoch).
        max_epochs: training epochs (the length of the schedule and of the averaging).
        averaging: averages the method's learned tensors over epochs (PromptSRC's GPA); its state is
            checkpointed.
        eval_chunk: most prompts per text pass when evaluating a conditional method (bounds memory).
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        method: Method,
        task: Task,
        objective: Objective | None = None,
        gradient_rule: GradientRule | None = None,
        optimizer: Optimizer | None = None,
        schedule: Schedule | None = None,
        max_epochs: int = 200,
        averaging: Averaging | None = None,
        eval_chunk: int = 4096,
    ):
        super().__init__()
        self.clip = clip
        self.method = method
        self.objective = objective if objective is not None else CrossEntropy()
        self.needs = objective_inputs.check_needs(self.objective.needs, type(self.objective).__name__)
        self.gradient_rule = gradient_rule
        self.automatic_optimization = gradient_rule is None
        self.optimizer = optimizer or sgd()
        self.schedule = schedule or WarmupCosine()
        self.max_epochs = max_epochs
        self.eval_chunk = eval_chunk
        self._eval_text: torch.Tensor | None = None
        self._fixed_text: torch.Tensor | None = None  # class features of a method with nothing to learn
        self._zero_shot: torch.Tensor | None = None
        self.averaging = averaging
        if averaging is not None:
            averaging.attach(method)
        self.set_task(task)

    # ------------------------------------------------------------------------------------------ class sets
    def set_task(self, task: Task) -> None:
        """Point the method, the objective and the metrics at another class set."""
        self.task = task
        self._fixed_text = self._zero_shot = None
        self.method.set_task(self.clip, task)
        self.objective.set_task(self.clip, task)
        n = len(task.classnames)
        self.acc = PercentAccuracy(num_classes=n, average="micro").to(self.clip.device)
        self.macro_acc = PercentAccuracy(num_classes=n, average="macro").to(self.clip.device)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The method's learned parameters (the only ones optimised)."""
        return [p for p in self.method.parameters() if p.requires_grad]

    @property
    def trainable(self) -> bool:
        """The method has parameters to optimise (gradient training runs)."""
        return bool(self.trainable_parameters())

    @property
    def learns(self) -> bool:
        """The method learns from the training set at all (by gradients or by `Method.fit`); false for
        zero-shot, whose numbers do not depend on the shots."""
        return self.trainable or self.method.capabilities.fits

    # ---------------------------------------------------------------------------------------------- forward
    def image_features(self, batch: dict) -> torch.Tensor:
        """Unnormalised image features ``(B, d)`` of a batch (precomputed ``features`` or raw ``image``)."""
        if "features" in batch:
            return batch["features"]
        return self.clip.encode_images(batch["image"], normalize=False, hook=self.method.image_hook())

    def forward(self, image_features: torch.Tensor, class_features: torch.Tensor | None = None) -> Outputs:
        """Score images (unnormalised features ``(B, d)``) with the method; pass ``class_features`` (from
        `Method.class_features`) to reuse them."""
        return self.method.score(self.clip, image_features, class_features)

    @staticmethod
    def predict_proba(logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)``: the softmax averaged over prompt sets / samples (at least fp32)."""
        with full_precision(logits):
            return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1).mean(dim=0)

    def loss_terms(self, outputs: Outputs, labels: torch.Tensor, inputs=None) -> dict[str, torch.Tensor]:
        """The objective's named terms (in fp32), plus the method's auxiliary loss as ``aux``."""
        with full_precision(outputs.logits):
            terms = dict(self.objective(outputs, labels, inputs))
        if outputs.aux_loss is not None:
            terms["aux"] = outputs.aux_loss
        return terms

    # -------------------------------------------------------------------------------- objectives' inputs
    def frozen_image_features(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised features of the batch through the unprompted image tower: the batch's own features when the
        method leaves the tower alone, the feature cache's (``frozen``) when the dataset carries them, else a
        second, unprompted pass (no gradient)."""
        if not self.method.capabilities.image_tower:
            frozen = image_features
        elif "frozen" in batch:
            frozen = batch["frozen"]
        else:
            frozen = self.clip.encode_images(batch["image"], normalize=False)
        with full_precision(frozen):
            return torch.nn.functional.normalize(frozen.detach().float(), dim=-1)

    def zero_shot_text_features(self) -> torch.Tensor:
        """Frozen CLIP's normalised class features of the task's template ``(C, d)``, once per class set."""
        if self._zero_shot is None:
            self._zero_shot = zero_shot_classifier(self.clip, self.task.classnames, self.task.template)
        return self._zero_shot

    # ------------------------------------------------------------------------------------------- training
    def training_outputs(self, batch: dict):
        """The forward pass of a training batch and the `Inputs` its objective asks for."""
        image_features = self.image_features(batch)
        outputs = self(image_features)
        return outputs, objective_inputs.resolve(self.needs, self, batch, image_features)

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
        outputs, inputs = self.training_outputs(batch)
        terms = self.loss_terms(outputs, labels, inputs)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss, terms, self.current_epoch, batch_idx)
        share = self._share(len(labels)) if self.world_size > 1 else 1.0
        if self.gradient_rule is not None:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            scaled = terms if share == 1.0 else {k: v * share for k, v in terms.items()}
            self.gradient_rule(scaled, self.trainable_parameters(), average=self.average_gradients)
            optimizer.step()
        n = len(labels)
        acc = 100.0 * (self.predict_proba(outputs.logits).argmax(-1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", acc, prog_bar=True, batch_size=n)
        if len(terms) > 1:
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
        return loss if share == 1.0 else loss * share

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.automatic_optimization and self.schedule.interval == "step":  # manual optimisation steps it
            self.lr_schedulers().step()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.schedule.interval == "epoch":
            self.lr_schedulers().step()
        if self.averaging is not None:  # before the epoch's checkpoint is written
            self.averaging.epoch_end(self.method, self.current_epoch, self.max_epochs)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.trainable_parameters())
        steps = int(self.trainer.estimated_stepping_batches) if self.schedule.interval == "step" else 0
        scheduler = self.schedule.scheduler(optimizer, self.max_epochs, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.schedule.interval}}

    # ----------------------------------------------------------------------------------------- evaluation
    def _start_eval(self) -> None:
        self.acc.reset()
        self.macro_acc.reset()
        if self._fixed_text is not None:  # nothing learned: computed once in total for this class set
            self._eval_text = self._fixed_text
            return
        with torch.no_grad():
            self._eval_text = self.method.class_features(self.clip)  # once per evaluation (None: per batch)
        if not self.trainable:
            self._fixed_text = self._eval_text

    def _eval_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        caps = self.method.capabilities
        if self._eval_text is not None or not caps.conditional:
            return self(image_features, self._eval_text).logits
        per = max(1, self.eval_chunk // (len(self.task.classnames) * caps.sets_per_image))  # images per pass
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
