"""The README's "Adding a method" example works as written."""

import re

import torch

from prompt_tuning.contexts.base import Task
from prompt_tuning.module import PromptTuner
from tests.conftest import REPO


def test_readme_method_example_trains_one_step(tiny_clip):
    text = (REPO / "README.md").read_text()
    section = text.split("## Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    task = Task(("cat", "dog"))
    context = namespace["MyContext"](tiny_clip, task, scale=2.0)
    module = PromptTuner(tiny_clip, context, task)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    sum(module.loss_terms(module(module.image_features(batch)), batch["label"]).values()).backward()
    assert context.delta.grad is not None and context.delta.grad.abs().sum() > 0
