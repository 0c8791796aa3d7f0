"""Objectives' inputs are resolved in one place: every `Inputs` field has a provider, an objective asking for
one the run cannot give is refused when the module is built, and a training step hands each objective exactly
the inputs it named, with the values a run has at that step."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Inputs, Task
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.methods.objectives import CrossEntropy
from prompt_tuning.runs.inputs import PROVIDERS, batch_keys
from prompt_tuning.runs.module import PromptTuner

TASK = Task(("red circle", "blue square", "green triangle"))


class Recording(CrossEntropy):
    needs = frozenset({"frozen_image_features", "zero_shot_text_features", "epoch", "max_epochs"})
    seen: list = []

    def forward(self, outputs, labels, inputs=None):
        Recording.seen.append(inputs)
        return super().forward(outputs, labels, inputs)


def test_every_inputs_field_has_a_provider_and_the_frozen_features_come_with_the_batch():
    assert set(PROVIDERS) == {f.name for f in dataclasses.fields(Inputs)}
    assert batch_keys({"frozen_image_features", "epoch"}) == {"frozen"} and batch_keys({"epoch"}) == set()


def test_an_objective_needing_what_no_run_provides_is_refused(tiny_clip):
    class Wants(CrossEntropy):
        needs = frozenset({"teacher_logits"})

    with pytest.raises(UserError, match="Wants needs teacher_logits, which a run cannot provide; an objective may "
                                        "need epoch, frozen_image_features, max_epochs, zero_shot_text_features"):
        PromptTuner(tiny_clip, CoOp(tiny_clip, TASK, n_ctx=2), TASK, Wants())


def test_a_training_step_resolves_each_named_input(tiny_clip):
    Recording.seen.clear()
    module = PromptTuner(tiny_clip, CoOp(tiny_clip, TASK, n_ctx=2), TASK, Recording(), max_epochs=7)
    images = torch.randn(4, 3, 32, 32)
    outputs, inputs = module.training_outputs({"image": images, "label": torch.tensor([0, 1, 2, 0])})
    module.loss_terms(outputs, torch.tensor([0, 1, 2, 0]), inputs)
    (got,) = Recording.seen
    assert got.epoch == 0 and got.max_epochs == 7
    assert torch.equal(got.frozen_image_features, F.normalize(tiny_clip.encode_images(images, normalize=False), dim=-1))
    assert torch.equal(got.zero_shot_text_features, tiny_clip.encode_text(TASK.prompts()))
    plain = PromptTuner(tiny_clip, CoOp(tiny_clip, TASK, n_ctx=2), TASK)
    assert plain.training_outputs({"image": images, "label": torch.tensor([0, 1, 2, 0])})[1] == Inputs()
