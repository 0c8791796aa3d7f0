"""Small helpers several test folders share: the last error line of a command, an experiment file of the first
steps, a loader of random images, and a 4-block tiny CLIP for the deep-prompt tests."""

import textwrap

import torch
from torch.utils.data import DataLoader, TensorDataset

# a tiny CLIP with 4 blocks per tower and different tower widths (deep prompts of depth 3-4, projections 64 -> 48)
ARCH4 = {"embed_dim": 32,
         "vision_cfg": {"image_size": 32, "layers": 4, "width": 48, "patch_size": 8, "head_width": 24},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4}}


def one_line(capsys) -> str:
    """The one ``error:`` line a command printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_experiment(tmp_path, data, datasets=("shapes",), extra: str = ""):
    """A small experiment: zero-shot and CoOp on ``datasets`` under ``data``, two seeds, one epoch."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""\
        name: first
        output: {tmp_path / 'out'}
        args: [model=tiny, data.root={data}, optim.max_epochs=1, protocol.shots=1]
        grid:
          method: [zeroshot, coop]
          dataset: [{', '.join(datasets)}]
          seed: [1, 2]
        """) + extra)
    return exp


class _Dicts(TensorDataset):
    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return {"image": image, "label": label}


def image_loader(n: int = 24, n_cls: int = 4, batch: int = 8, seed: int = 0) -> DataLoader:
    """Random 32 px images with labels ``i % n_cls``, as ``{"image", "label"}`` batches."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.arange(n) % n_cls
    return DataLoader(_Dicts(images, labels), batch_size=batch)


def random_images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
