"""`prompt-tuning bench --whole-run`: one CoOp run end to end on real JPEG files, ours against the authors' path.

The step bench times the model alone. On real data a run also decodes JPEGs, augments them on the data-loader
workers, evaluates, and writes its files; once the image encoder is fast (a GPU, cached views) that part can
dominate. This bench writes an image folder of JPEGs at the benchmark datasets' typical sizes (224-500 px),
then runs

* ours: the normal ``train`` path (`prompt_tuning.runs.runner.train`), data loader, training, evaluation with
  the feature cache, ``result.json``;
* the authors' path on the same files: CoOp's loop as their code runs it, a fresh augmentation and an image
  encoder pass at every step, the text encoder over all 77 positions, the class features recomputed for every
  test batch;

and reports wall time per epoch and for the whole run, the part of it that data loading alone takes (one pass
of the same data loader with no model), peak memory (the process's peak RSS, or CUDA's peak allocation), and
the ratio. Epochs are cut so that the run takes minutes; the report projects the figures to the recipe's
epochs (CoOp 16 shots: 200).
"""

from __future__ import annotations

import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from prompt_tuning.apps.reference import reference_frame, reference_text_features
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.config.compose import compose
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datamodule import ImageDataset
from prompt_tuning.data.datasets import ImageFolder
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.methods.base import Task
from prompt_tuning.methods.contexts.coop import CoOp

RECIPE_EPOCHS = 200  # CoOp at 16 shots (configs/protocol/fewshot.yaml)


def make_jpeg_folder(root: Path, classes: int, shots: int, test_images: int, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/*.jpg``: ``shots`` training JPEGs per class and ``test_images`` in all, of
    random sizes between 224 and 500 px (smooth random colour fields, so JPEG sizes are those of photos)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", [shots] * classes),
                             ("test", [test_images // classes + (i < test_images % classes) for i in range(classes)])):
        for c, n in enumerate(per_class):
            folder = root / split / f"class {c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = rng.randint(224, 500), rng.randint(224, 500)
                small = torch.rand(3, 8, 8, generator=g)
                field = F.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0]
                noise = torch.rand(3, h, w, generator=g) * 0.15
                pixels = ((field + noise).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _child(queue, fn, args):
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice
    try:
        out = fn(*args)
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
        queue.put(out)
    except BaseException as e:  # noqa: BLE001 - said by the parent
        queue.put(e if isinstance(e, UserError) else RuntimeError(f"{type(e).__name__}: {e}"))


def _in_child(fn, *args) -> dict:
    """``fn(*args)`` in a process of its own, so that each path's peak memory is its own."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fork of a process with torch's threads running can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    out = queue.get()
    proc.join()
    if isinstance(out, BaseException):
        raise out
    return out


def _loader_pass(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def authors_path(root: Path, model: str, epochs: int, batch: int, workers: int, device: str, log=print) -> dict:
    """CoOp's training and test loop as the authors' code runs it, on the folder's files."""
    torch.manual_seed(0)
    arch = model if model.endswith(".json") else None
    clip = FrozenCLIP.build(model if arch is None else Path(model).stem, None, arch=arch).to(device)
    splits = ImageFolder(str(root)).load()
    names = tuple(sorted({(it.label, it.classname) for it in splits["train"]}))
    names = tuple(name for _, name in names)
    task = Task(names)
    coop = CoOp(clip, task, n_ctx=16).to(device)
    frame = reference_frame(clip, coop, task)
    optimizer = torch.optim.SGD([coop.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    tf_train, tf_eval = train_transform(clip.preprocess), eval_transform(clip.preprocess)
    train_loader = DataLoader(ImageDataset(splits["train"], tf_train), batch_size=batch, shuffle=True,
                              num_workers=workers, drop_last=len(splits["train"]) >= batch)  # Dassl's rule
    test_loader = DataLoader(ImageDataset(splits["test"], tf_eval), batch_size=100, num_workers=workers)
    data_s = _loader_pass(train_loader)
    log(f"  authors' path: data loading alone {data_s:.1f} s per epoch")
    epoch_s = []
    start = time.perf_counter()
    for e in range(epochs):
        t0 = time.perf_counter()
        for b in train_loader:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):  # as ours on a GPU
                with torch.no_grad():
                    img = clip.encode_images(b["image"].to(device))
                txt = reference_text_features(clip, frame.assemble(coop.ctx)[0], frame.eot_index)
                loss = F.cross_entropy(clip.logit_scale * img.float() @ txt.float().T, b["label"].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_s.append(time.perf_counter() - t0)
        log(f"  authors' path: epoch {e + 1}/{epochs} {epoch_s[-1]:.1f} s")
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        for b in test_loader:
            txt = reference_text_features(clip, frame.assemble(coop.ctx)[0], frame.eot_index)  # per test batch
            (clip.encode_images(b["image"].to(device)) @ txt.T).argmax(-1).cpu()
    eval_s = time.perf_counter() - t0
    log(f"  authors' path: evaluation {eval_s:.1f} s")
    return {"epoch_s": statistics.median(epoch_s), "eval_s": eval_s, "run_s": time.perf_counter() - start,
            "data_s_per_epoch": data_s}


def our_path(root: Path, out: Path, cache: Path, model: str, shots: int, epochs: int, batch: int, workers: int,
             device: str = "cpu", log=print) -> dict:
    """The normal ``train`` path on the folder (`Run`: build, fit, evaluate, write), each step timed."""
    from prompt_tuning.config.hashing import run_hash
    from prompt_tuning.runs.folder import RunFolder
    from prompt_tuning.runs.runner import Run

    args = [f"model={model}" if model.endswith(".json") else "model=vit_b16", f"dataset={root}", "method=coop",
            f"protocol.shots={shots}", f"optim.max_epochs={epochs}", f"data.batch_size={batch}",
            f"runtime.num_workers={workers}", "runtime.progress=false", f"runtime.cache_dir={cache}",
            f"output_dir={out}", f"trainer.accelerator={'cpu' if device == 'cpu' else 'gpu'}"]
    if not model.endswith(".json"):
        args += [f"model.name={model}", "model.pretrained=null"]
    cfg = compose(args)
    folder = RunFolder(cfg.output_dir)
    run = Run(cfg, folder, run_hash(cfg), {})
    start = time.perf_counter()
    with folder.lock():
        setup, trainer, resume = run.prepare()
        prepared = time.perf_counter()
        data_s = _loader_pass(setup.datamodule.train_dataloader())
        log(f"  ours: data loading alone {data_s:.1f} s per epoch")
        fit_start = time.perf_counter()
        run.fit(setup, trainer, resume)
        fitted = time.perf_counter()
        metrics = run.evaluate(setup, trainer)
        evaluated = time.perf_counter()
        run.write(setup, metrics, evaluated - start, resume)
    end = time.perf_counter()
    epoch_s = (fitted - fit_start) / epochs
    log(f"  ours: {epochs} epochs {fitted - fit_start:.1f} s, evaluation {evaluated - fitted:.1f} s")
    return {"epoch_s": epoch_s, "eval_s": evaluated - fitted, "data_s_per_epoch": data_s,
            "run_s": end - start - (fit_start - prepared)}  # the extra loader pass is not part of the run


def run_whole(classes: int = 20, shots: int = 16, test_images: int = 200, model: str = "ViT-B-16",
              epochs: int = 2, batch: int = 32, workers: int = 2, device: str = "cpu", keep: str | None = None,
              log=print) -> dict:
    """Both paths on one generated folder; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="pt-bench-run-") as tmp:
        root = Path(keep) if keep else Path(tmp) / "images"
        if not (root / "train").is_dir():
            log(f"writing {classes} x {shots} training and {test_images} test JPEGs (224-500 px) to {root} ...")
            make_jpeg_folder(root, classes, shots, test_images)
        log(f"ours ({model}, {epochs} epochs, {workers} data-loader workers):")
        ours = _in_child(our_path, root, Path(tmp) / "run", Path(tmp) / "cache", model, shots, epochs, batch,
                         workers, device, _stderr)
        log("the authors' path, same files:")
        ref = _in_child(authors_path, root, model, epochs, batch, workers, device, _stderr)
    project = lambda t: (t["run_s"] - t["epoch_s"] * epochs) + t["epoch_s"] * RECIPE_EPOCHS  # noqa: E731
    return {
        "model": model, "device": device, "classes": classes, "shots": shots, "test_images": test_images,
        "epochs": epochs, "batch": batch, "workers": workers, "threads": torch.get_num_threads(),
        "epoch_s_ours": ours["epoch_s"], "epoch_s_reference": ref["epoch_s"],
        "run_s_ours": ours["run_s"], "run_s_reference": ref["run_s"], "eval_s_ours": ours["eval_s"],
        "eval_s_reference": ref["eval_s"],
        "data_s_per_epoch_ours": ours["data_s_per_epoch"], "data_s_per_epoch_reference": ref["data_s_per_epoch"],
        "data_share_ours": ours["data_s_per_epoch"] / ours["epoch_s"],
        "data_share_reference": ref["data_s_per_epoch"] / ref["epoch_s"],
        "epoch_ratio": ref["epoch_s"] / ours["epoch_s"], "run_ratio": ref["run_s"] / ours["run_s"],
        "projected_run_s_ours": project(ours), "projected_run_s_reference": project(ref),
        "projected_epochs": RECIPE_EPOCHS,
        "peak_mem_mb_ours": ours["peak_mem_mb"], "peak_mem_mb_reference": ref["peak_mem_mb"],
        "memory_measure": "cuda peak allocated" if device.startswith("cuda") else "peak RSS of the path's process",
    }


def format_whole_run(r: dict) -> str:
    proj = r["projected_run_s_reference"] / r["projected_run_s_ours"]
    return "\n".join([
        f"prompt-tuning bench --whole-run: {r['model']} on {r['device']} ({r['threads']} threads), CoOp, "
        f"{r['classes']} classes x {r['shots']} shots, {r['test_images']} test JPEGs, {r['epochs']} epochs, "
        f"batch {r['batch']}, {r['workers']} data-loader workers",
        "",
        "| measure | authors' path | ours | ratio |",
        "|---|---|---|---|",
        f"| training epoch | {r['epoch_s_reference']:.1f} s | {r['epoch_s_ours']:.1f} s | {r['epoch_ratio']:.2f}x |",
        f"| evaluation ({r['test_images']} test images) | {r['eval_s_reference']:.1f} s | {r['eval_s_ours']:.1f} s | "
        f"{r['eval_s_reference'] / r['eval_s_ours']:.2f}x |",
        f"| data loading alone, per epoch (share of the epoch) | {r['data_s_per_epoch_reference']:.1f} s "
        f"({r['data_share_reference']:.0%}) | {r['data_s_per_epoch_ours']:.1f} s ({r['data_share_ours']:.0%}) | |",
        f"| whole run ({r['epochs']} epochs, evaluation, files) | {r['run_s_reference']:.1f} s | "
        f"{r['run_s_ours']:.1f} s | {r['run_ratio']:.2f}x |",
        f"| projected to {r['projected_epochs']} epochs | {r['projected_run_s_reference'] / 60:.1f} min | "
        f"{r['projected_run_s_ours'] / 60:.1f} min | {proj:.2f}x |",
        f"| peak memory ({r['memory_measure']}) | {r['peak_mem_mb_reference']:.0f} MB | "
        f"{r['peak_mem_mb_ours']:.0f} MB | {r['peak_mem_mb_reference'] / r['peak_mem_mb_ours']:.2f}x |",
    ])
