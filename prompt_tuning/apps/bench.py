"""`prompt-tuning bench`: our training step and evaluation against the reference recipe, side by side.

The reference recipe (CoOp/CoCoOp-style code) runs the image encoder at every step, the text encoder over all
77 token positions, and recomputes every class's text features for every test batch. Ours runs the text
encoder only up to the last end-of-text token (bit-identical), computes class features once per evaluation, and
serves frozen image features from the cache. Both paths start from the same context vectors and images; the
benchmark checks that they give the same logits.

Random weights are fine for timing (the architecture sets the cost). The paths of one comparison take turns,
round after round (A B C, then C B A, ...; one untimed warm-up round first), so that a burst of other work on a
busy machine lands on both sides alike: each ratio is the median over ``--repeats`` rounds of the ratio of the
two times taken side by side, printed with its spread (smallest to largest over the rounds); times are medians.
Evaluations and CoCoOp at batch 32 (tens of seconds per reference call) take at most two rounds and no warm-up
round. Memory is measured in each path's first call (the warm-up round where there is one): the peak allocated on
CUDA; on CPU the activations a training step keeps for its backward pass (the part the two paths differ in;
process-wide RSS cannot separate them). On a GPU every timed call runs under bf16 autocast.

    prompt-tuning bench --classes 100 --json bench.json
    prompt-tuning bench --device cuda --json bench-gpu.json      # the same comparison on a GPU
    prompt-tuning bench --method maple                            # prompts in both towers
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from prompt_tuning.apps.reference import reference_frame, reference_text_features
from prompt_tuning.backbone import FrozenCLIP, TextPassOptions
from prompt_tuning.core.errors import HelpFormatter, UserError
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.methods.base import Inputs, Outputs, Task
from prompt_tuning.methods.contexts.coop import CoOp


def _timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Wall time of ``fn()``; on a GPU under bf16 autocast (the toolkit's default precision there)."""
    if not device.startswith("cuda"):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


SPAN, MAX_CALLS = 2.0, 50  # seconds a path's timing spans per round (a burst of other work is then a fraction)


def interleaved(paths: dict[str, Callable[[], object]], repeats: int, device: str, reset: Callable[[], None] = None,
                log=print, label: str = "", warmup: bool = True, memory: dict | None = None) -> dict[str, list[float]]:
    """Wall times of each path over ``repeats`` rounds, the paths taking turns within a round (A B C, then C B A,
    ...), after an untimed warm-up round (``warmup``): a burst of other work on the machine lands on every path
    alike, and each round gives one paired ratio. A path faster than `SPAN` seconds is called as many times a
    round as fill it (counted in the warm-up) and timed per call. ``reset()`` runs before every call.
    With ``memory`` (a dict), each path's memory (`_measured`) is measured in its first call and stored there:
    in the warm-up round, or in the first timed round of an expensive comparison that has none."""
    names, times = list(paths), {name: [] for name in paths}
    calls = dict.fromkeys(names, 1)  # a short path is called several times a round, so that it spans SPAN seconds
    first = 0 if warmup else 1
    for r in range(first, repeats + 1):
        for name in (names if r % 2 else names[::-1]):
            total = 0.0
            for _ in range(calls[name]):
                if reset is not None:
                    reset()
                if memory is not None and name not in memory:
                    measured = _measured(paths[name], device)
                    memory[name], t = measured["mb"], measured["time"]
                else:
                    t, _ = _timed(paths[name], device)
                total += t
            if r:  # round 0 warms up caches, allocators and lazy initialisation
                times[name].append(total / calls[name])
            else:
                calls[name] = max(1, min(MAX_CALLS, math.ceil(SPAN / max(total, 1e-6))))
        if r:
            log(f"  {label}round {r}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    return times


def paired_ratio(reference: list[float], ours: list[float]) -> tuple[float, float, float]:
    """The median over rounds of reference / ours (each round's two times were taken side by side), and the
    smallest and largest of those ratios."""
    ratios = [a / b for a, b in zip(reference, ours)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _measured(fn: Callable[[], object], device: str) -> dict:
    """One timed call and the MB it needs: the peak CUDA allocation on a GPU, else the activations it saves for
    backward (the hooks that count them cost a little time)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t, _ = _timed(fn, device)
        return {"time": t, "mb": torch.cuda.max_memory_allocated() / 2**20}
    with _SavedBytes() as saved:
        t, _ = _timed(fn, device)
    return {"time": t, "mb": saved.total / 2**20}


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward while active (activation memory of a step)."""

    def __init__(self):
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _text_step(features_fn: Callable[[], torch.Tensor], param: torch.Tensor) -> None:
    """The text side of a training step: class features, a loss on them, the gradient of the context."""
    feats = features_fn()
    torch.autograd.grad((feats * feats.detach().flip(0)).sum(), [param])


def _kept_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the activations a forward pass keeps for backward (forward only: nothing is run backwards)."""
    with _SavedBytes() as saved:
        fn()
    return saved.total


def activations_1000_classes(clip: FrozenCLIP, log=print, target: int = 1000) -> dict:
    """Activations a CoOp text pass keeps for backward at ``target`` classes (ImageNet), ours and the reference
    path's, in MB. They are affine in the number of classes (a shared part plus the same amount per class), so
    they are measured from forward passes at 8 and 16 classes and extended to ``target`` exactly."""
    def measure(n: int, path: str) -> int:
        task = Task(tuple(f"synthetic object number {i}" for i in range(n)))
        ctx = CoOp(clip, task, n_ctx=16).to(clip.device)
        if path == "reference":
            frame = reference_frame(clip, ctx, task)
            return _kept_bytes(lambda: reference_text_features(clip, frame.assemble(ctx.ctx)[0], frame.eot_index))
        ours = clip.with_options(checkpointing=path == "checkpointed")
        return _kept_bytes(lambda: ctx.text_features(ours)[0])

    out = {}
    for path, key in (("reference", "act_mem_1000cls_reference_mb"), ("ours", "act_mem_1000cls_ours_mb"),
                      ("checkpointed", "act_mem_1000cls_ours_checkpointed_mb")):
        a, b = measure(8, path), measure(16, path)
        out[key] = (a + (b - a) / 8 * (target - 8)) / 2**20
        log(f"  activations kept at {target} classes, {path}: {out[key]:.0f} MB")
    return out


def cocoop_steps(clip: FrozenCLIP, classes: int, device: str, repeats: int, log=print) -> dict:
    """CoCoOp's text side and loss (B x C prompts per step) at batch 1 (the authors' setting) and 32: ours (one
    batched pass, each image's prompts sharing their prefix) against the authors' loop (each image's prompts
    through all 77 positions). Image features are given, so the image encoder is left out of both."""
    from prompt_tuning.methods.contexts.cocoop import CoCoOp

    task = Task(tuple(f"synthetic object number {i}" for i in range(classes)))
    ctx = CoCoOp(clip, task).to(device)
    frame = reference_frame(clip, ctx, task)
    params = [p for p in ctx.parameters() if p.requires_grad]
    scale = clip.logit_scale
    out = {}
    for b in (1, 32):
        g = torch.Generator().manual_seed(b)
        img = F.normalize(torch.randn(b, clip.embed_dim, generator=g), dim=-1).to(device)
        labels = torch.arange(b, device=device) % classes

        def reference(img=img, b=b, labels=labels):
            bias = ctx.meta_net(img)
            logits = []
            for i in range(b):  # the authors' loop over the images of a batch
                emb = frame.assemble(ctx.ctx + bias[i])[0]
                logits.append(scale * img[i] @ reference_text_features(clip, emb, frame.eot_index).T)
            torch.autograd.grad(F.cross_entropy(torch.stack(logits), labels), params)

        def ours(img=img, labels=labels):
            txt = ctx.text_features(clip, img)[0]  # (B, C, d)
            logits = scale * torch.einsum("bd,bcd->bc", img, txt)
            torch.autograd.grad(F.cross_entropy(logits, labels), params)

        kept: dict = {}
        # batch 32 takes tens of seconds per reference step: batch 1 warmed everything up, two rounds suffice
        times = interleaved({"reference": reference, "ours": ours}, repeats if b == 1 else min(repeats, 2), device,
                            log=log, label=f"CoCoOp batch {b}, {classes} classes, ", warmup=b == 1, memory=kept)
        ratio, low, high = paired_ratio(times["reference"], times["ours"])
        suffix = "" if b == 1 else "_b32"
        out[f"cocoop_step_s_reference{suffix}"] = statistics.median(times["reference"])
        out[f"cocoop_step_s_ours{suffix}"] = statistics.median(times["ours"])
        out[f"cocoop_step_ratio{suffix}"] = ratio
        out[f"cocoop_step_ratio{suffix}_spread"] = [low, high]
        out["cocoop_act_mem_reference_mb" if b == 32 else "cocoop_act_mem_b1_reference_mb"] = kept["reference"]
        out["cocoop_act_mem_ours_mb" if b == 32 else "cocoop_act_mem_b1_ours_mb"] = kept["ours"]
    out["cocoop_classes"] = classes
    return out


def run(classes: int = 100, shots: int = 16, model: str = "ViT-B-16", device: str = "cpu", repeats: int = 3,
        batch: int = 32, test_images: int = 50, eval_batch: int = 25, seed: int = 0, log=print,
        cocoop_classes: int = 10) -> dict:
    """Measure both paths; returns the figures (see `main` for the printed table)."""
    torch.manual_seed(seed)
    log(f"building {model} (random weights) on {device} ...")
    arch = model if model.endswith(".json") else None
    clip = FrozenCLIP.build(model if arch is None else Path(model).stem, None, arch=arch,
                            options=TextPassOptions(shared_prefix=True)).to(device)  # ours: the default text pass
    names = tuple(f"synthetic object number {i}" for i in range(classes))
    task = Task(names)
    coop = CoOp(clip, task, n_ctx=16).to(device)
    ctx0 = coop.ctx.detach().clone()
    size = clip.preprocess.image_size
    g = torch.Generator().manual_seed(seed)
    pil = [Image.fromarray(torch.randint(0, 256, (size + 32, size + 32, 3), generator=g, dtype=torch.uint8).numpy())
           for _ in range(batch)]
    labels = torch.arange(batch, device=device) % classes
    train_tf, eval_tf = train_transform(clip.preprocess), eval_transform(clip.preprocess)

    # the reference prompt: SOS, context, then the class tokens and padding up to 77 positions
    frame = reference_frame(clip, coop, task)
    eot = frame.eot_index

    def ref_prompts(ctx):
        return frame.assemble(ctx)[0]

    def augmented_batch():
        return torch.stack([train_tf(im) for im in pil]).to(device)

    def sgd_step(loss, params):
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p.sub_(0.002 * gr)

    logit_scale = clip.logit_scale

    def step_reference():
        img = clip.encode_images(augmented_batch())
        txt = reference_text_features(clip, ref_prompts(coop.ctx), eot)
        sgd_step(F.cross_entropy(logit_scale * img @ txt.T, labels), [coop.ctx])

    def step_ours(img=None):
        img = clip.encode_images(augmented_batch()) if img is None else img
        txt = coop.text_features(clip)[0][0]
        sgd_step(F.cross_entropy(logit_scale * img @ txt.T, labels), [coop.ctx])

    # equality of the two paths on the same inputs
    with torch.no_grad():
        img = clip.encode_images(torch.stack([eval_tf(im) for im in pil]).to(device))
        ours_logits = logit_scale * img @ coop.text_features(clip)[0][0].T
        ref_logits = logit_scale * img @ reference_text_features(clip, ref_prompts(coop.ctx), eot).T
    diff = (ours_logits - ref_logits).abs().max().item()
    rel = diff / ref_logits.abs().max().item()
    log(f"logits max abs diff (ours vs reference): {diff} ({rel:.1e} of the largest logit)")

    def reset():
        coop.ctx.data.copy_(ctx0)

    cached_img = clip.encode_images(augmented_batch())  # stands for a cached view
    steps = {"reference": step_reference, "exact": step_ours, "cached": lambda: step_ours(cached_img)}
    train_memory: dict = {}
    log(f"training step, CoOp, batch {batch}, {classes} classes (reference; ours, exact (fresh augmentation); "
        "ours, cached views):")
    train = interleaved(steps, repeats, device, reset, log, memory=train_memory)
    mem_ref, mem_ours = train_memory["reference"], train_memory["exact"]
    t_ref, t_exact, t_cached = (statistics.median(train[k]) for k in ("reference", "exact", "cached"))

    log(f"text side alone (fwd + bwd), {classes} classes (reference, 77 tokens; ours, truncated, shared prefix):")
    text = interleaved({
        "reference": lambda: _text_step(lambda: reference_text_features(clip, ref_prompts(coop.ctx), eot), coop.ctx),
        "ours": lambda: _text_step(lambda: coop.text_features(clip)[0][0], coop.ctx)}, repeats, device, reset, log)
    mem = activations_1000_classes(clip, log)
    cocoop = cocoop_steps(clip, cocoop_classes, device, repeats, log)

    n_test = test_images
    test = torch.randint(0, 256, (n_test, 3, size, size), generator=g, dtype=torch.uint8).float().div(255).to(device)
    batches = test.split(eval_batch)
    eval_repeats = min(repeats, 2)  # each round encodes every test image twice; the steps warmed everything up
    log(f"evaluation, {n_test} test images in batches of {eval_batch} (reference; ours, cold cache; ours, warm):")

    def eval_reference():
        with torch.no_grad():
            for b in batches:
                txt = reference_text_features(clip, ref_prompts(coop.ctx), eot)  # per batch
                (clip.encode_images(b) @ txt.T).argmax(-1)

    def eval_cold():
        with torch.no_grad():
            txt = coop.text_features(clip)[0][0]
            feats = torch.cat([clip.encode_images(b) for b in batches])
            return (feats @ txt.T).argmax(-1), feats

    with torch.no_grad():
        feats = torch.cat([clip.encode_images(b) for b in batches])

    def eval_warm():
        with torch.no_grad():
            txt = coop.text_features(clip)[0][0]
            return (feats @ txt.T).argmax(-1)

    evals = interleaved({"reference": eval_reference, "cold": eval_cold, "warm": eval_warm}, eval_repeats, device,
                        log=log, warmup=False)
    t_eval_ref, t_eval_cold, t_eval_warm = (statistics.median(evals[k]) for k in ("reference", "cold", "warm"))
    ratios = {
        "train_step_ratio_exact": paired_ratio(train["reference"], train["exact"]),
        "train_step_ratio_cached": paired_ratio(train["reference"], train["cached"]),
        "text_step_ratio": paired_ratio(text["reference"], text["ours"]),
        "eval_ratio_cold": paired_ratio(evals["reference"], evals["cold"]),
        "eval_ratio_warm": paired_ratio(evals["reference"], evals["warm"]),
    }

    steps_per_epoch = max(1, classes * shots // batch)
    return {
        "model": model, "device": device, "classes": classes, "batch": batch, "shots": shots,
        "test_images": n_test, "eval_batch": eval_batch, "repeats": repeats, "eval_repeats": eval_repeats,
        "prompt_tokens_ours": int(eot.max()) + 1, "prompt_tokens_reference": clip.context_length,
        "train_step_s_reference": t_ref, "train_step_s_exact": t_exact, "train_step_s_cached": t_cached,
        "epoch_s_reference": t_ref * steps_per_epoch, "epoch_s_exact": t_exact * steps_per_epoch,
        "epoch_s_cached": t_cached * steps_per_epoch,
        "eval_s_reference": t_eval_ref, "eval_s_cold": t_eval_cold, "eval_s_warm": t_eval_warm,
        "logits_max_abs_diff": diff, "logits_max_rel_diff": rel,
        "text_step_s_reference": statistics.median(text["reference"]),
        "text_step_s_ours": statistics.median(text["ours"]),
        **{k: v[0] for k, v in ratios.items()}, **{f"{k}_spread": [v[1], v[2]] for k, v in ratios.items()},
        **mem, **cocoop,
        "peak_mem_ours_mb": mem_ours, "peak_mem_reference_mb": mem_ref,
        "memory_measure": "cuda peak allocated" if device.startswith("cuda") else "activations saved for backward",
        "threads": torch.get_num_threads(),
    }


def reference_deep_text_features(clip: FrozenCLIP, embeddings77: torch.Tensor, eot: torch.Tensor,
                                  deep: list[torch.Tensor], start: int = 1) -> torch.Tensor:
    """The authors' deep-prompt TextEncoder: all 77 positions, each layer's prompts spliced in at its input."""
    m = clip.text_tower
    x = embeddings77 + m.positional_embedding
    n = x.shape[0]
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1]
            x = torch.cat([x[:, :start], p.expand(n, -1, -1), x[:, start + p.shape[0]:]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    return F.normalize(clip.text_output(x, eot), dim=-1)


def run_multimodal(method: str = "maple", classes: int = 100, model: str = "ViT-B-16", device: str = "cpu",
                   repeats: int = 3, batch: int = 4, seed: int = 0, log=print) -> dict:
    """A training step of MaPLe or PromptSRC (the authors' settings: batch 4, depth 9) against the authors'
    recipe path: the text transformer over all 77 positions and, for PromptSRC, the frozen image tower run
    again on every batch. Ours: the text pass truncated at the last end-of-text token (same numbers) and, with
    cached views, PromptSRC's frozen image features read from the cache."""
    from prompt_tuning.methods.contexts.ivlp import IVLP
    from prompt_tuning.methods.contexts.maple import MaPLe
    from prompt_tuning.methods.objectives import SelfRegulating

    if method not in ("maple", "promptsrc"):
        raise UserError(f"--method {method}: choose coop, maple or promptsrc")
    torch.manual_seed(seed)
    log(f"building {model} (random weights) on {device} ...")
    arch = model if model.endswith(".json") else None
    clip = FrozenCLIP.build(model if arch is None else Path(model).stem, None, arch=arch,
                            options=TextPassOptions(shared_prefix=True)).to(device)  # ours: the default text pass
    task = Task(tuple(f"synthetic object number {i}" for i in range(classes)))
    depth = min(9, clip.text_blocks, clip.vision_blocks)
    if method == "maple":
        ctx = MaPLe(clip, task, n_ctx=2, depth=depth).to(device)
        objective = None
    else:
        ctx = IVLP(clip, task, n_ctx_text=4, n_ctx_vision=4, depth_text=depth, depth_vision=depth).to(device)
        objective = SelfRegulating(clip, task, templates=["a photo of a {}."]).to(device)  # precomputed either way
    params = [p for p in ctx.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    size = clip.preprocess.image_size
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    labels = torch.arange(batch, device=device) % classes
    prompts = ctx()
    frame = reference_frame(clip, ctx, task)
    eot = frame.eot_index
    scale = clip.logit_scale

    def ref_text():
        return reference_deep_text_features(clip, frame.assemble(ctx.ctx)[0], eot, list(ctx.deep_text.unbind(0)))

    def our_text():
        return ctx.text_features(clip)[0][0]

    def loss_of(txt, frozen):
        img = F.normalize(clip.encode_images(images, normalize=False, hook=ctx.image_hook()), dim=-1)
        logits = scale * img @ txt.T
        if objective is None:
            return F.cross_entropy(logits, labels)
        out = Outputs(logits.unsqueeze(0), img, txt.unsqueeze(0))
        return sum(objective(out, labels, Inputs(frozen_image_features=frozen)).values())

    frozen_cached = F.normalize(clip.encode_images(images, normalize=False), dim=-1)

    def step(text_fn, frozen_fn):
        loss = loss_of(text_fn(), frozen_fn() if objective is not None else None)  # MaPLe needs no frozen pass
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p_, gr in zip(params, grads):
                p_.sub_(0.0025 * gr)

    def frozen_pass():  # the authors' ZS_image_encoder on every batch
        with torch.no_grad():
            return F.normalize(clip.encode_images(images, normalize=False), dim=-1)

    with torch.no_grad():
        diff = (our_text() - ref_text()).abs().max().item()
    log(f"class text features max abs diff (ours vs reference): {diff}")
    assert prompts.embeddings.shape[2] == int(eot.max()) + 1

    def reset():
        with torch.no_grad():
            for p_, s0 in zip(params, start):
                p_.copy_(s0)

    steps = {"reference": lambda: step(ref_text, frozen_pass), "exact": lambda: step(our_text, frozen_pass)}
    if objective is not None:
        steps["cached"] = lambda: step(our_text, lambda: frozen_cached)
    memory: dict = {}
    log(f"training step, {method}, batch {batch}, {classes} classes, depth {depth} (reference: 77 tokens"
        + (", frozen image pass per step" if objective is not None else "") + "; ours, exact"
        + ("; ours, frozen features cached" if objective is not None else "") + "):")
    times = interleaved(steps, repeats, device, reset, log, memory=memory)
    ratio = {k: paired_ratio(times["reference"], times[k]) for k in steps if k != "reference"}
    r = {"method": method, "model": model, "device": device, "classes": classes, "batch": batch, "depth": depth,
         "repeats": repeats, "prompt_tokens_ours": int(eot.max()) + 1, "prompt_tokens_reference": clip.context_length,
         "text_features_max_abs_diff": diff, "train_step_s_reference": statistics.median(times["reference"]),
         "train_step_s_exact": statistics.median(times["exact"]), "train_step_ratio_exact": ratio["exact"][0],
         "train_step_ratio_exact_spread": list(ratio["exact"][1:]),
         "peak_mem_reference_mb": memory["reference"], "peak_mem_ours_mb": memory["exact"],
         "memory_measure": "cuda peak allocated" if device.startswith("cuda") else "activations saved for backward",
         "threads": torch.get_num_threads()}
    if "cached" in steps:
        r.update(train_step_s_cached=statistics.median(times["cached"]), train_step_ratio_cached=ratio["cached"][0],
                 train_step_ratio_cached_spread=list(ratio["cached"][1:]), peak_mem_cached_mb=memory["cached"])
    return r


def _ratio(r: dict, key: str) -> str:
    """A ratio with its spread over the rounds (smallest to largest paired ratio)."""
    spread = r.get(f"{key}_spread")
    return f"{r[key]:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def format_multimodal_report(r: dict) -> str:
    rows = [
        f"prompt-tuning bench --method {r['method']}: {r['model']} on {r['device']} ({r['threads']} threads), "
        f"{r['classes']} classes, batch {r['batch']}, depth {r['depth']}, prompts {r['prompt_tokens_ours']} vs "
        f"{r['prompt_tokens_reference']} tokens",
        "",
        "| measure | reference | ours | ratio (spread over rounds) |",
        "|---|---|---|---|",
        f"| train step, exact | {r['train_step_s_reference']:.2f} s | {r['train_step_s_exact']:.2f} s | "
        f"{_ratio(r, 'train_step_ratio_exact')} |",
    ]
    if "train_step_s_cached" in r:
        rows.append(f"| train step, frozen image features from the cache | {r['train_step_s_reference']:.2f} s | "
                    f"{r['train_step_s_cached']:.2f} s | {_ratio(r, 'train_step_ratio_cached')} |")
    rows += [
        f"| memory per train step ({r['memory_measure']}) | {r['peak_mem_reference_mb']:.0f} MB | "
        f"{r['peak_mem_ours_mb']:.0f} MB | {r['peak_mem_reference_mb'] / max(r['peak_mem_ours_mb'], 1e-9):.2f}x |",
        "",
        f"class text features max abs diff, ours vs reference: {r['text_features_max_abs_diff']:.2e} "
        f"({'same within float rounding' if r['text_features_max_abs_diff'] <= 1e-5 else 'MISMATCH'})",
    ]
    return "\n".join(rows)


def format_report(r: dict) -> str:
    rows = [
        f"prompt-tuning bench: {r['model']} on {r['device']} ({r['threads']} threads), {r['classes']} classes, "
        f"prompts {r['prompt_tokens_ours']} vs {r['prompt_tokens_reference']} tokens",
        "",
        "| measure | reference | ours | ratio (spread over rounds) |",
        "|---|---|---|---|",
        f"| train step, exact (fresh augmentation) | {r['train_step_s_reference']:.2f} s | "
        f"{r['train_step_s_exact']:.2f} s | {_ratio(r, 'train_step_ratio_exact')} |",
        f"| train step, cached views | {r['train_step_s_reference']:.2f} s | {r['train_step_s_cached']:.2f} s | "
        f"{_ratio(r, 'train_step_ratio_cached')} |",
        f"| {r['shots']}-shot epoch (projected), exact / cached | {r['epoch_s_reference']:.0f} s | "
        f"{r['epoch_s_exact']:.0f} / {r['epoch_s_cached']:.0f} s | |",
        f"| evaluation, cold feature cache | {r['eval_s_reference']:.2f} s | {r['eval_s_cold']:.2f} s | "
        f"{_ratio(r, 'eval_ratio_cold')} |",
        f"| evaluation, warm feature cache | {r['eval_s_reference']:.2f} s | {r['eval_s_warm']:.2f} s | "
        f"{_ratio(r, 'eval_ratio_warm')} |",
        f"| memory per train step ({r['memory_measure']}) | {r['peak_mem_reference_mb']:.0f} MB | "
        f"{r['peak_mem_ours_mb']:.0f} MB | {r['peak_mem_reference_mb'] / max(r['peak_mem_ours_mb'], 1e-9):.2f}x |",
        f"| text side alone (fwd + bwd), {r['classes']} classes | {r['text_step_s_reference']:.2f} s | "
        f"{r['text_step_s_ours']:.2f} s | {_ratio(r, 'text_step_ratio')} |",
        f"| activations kept, 1000 classes (checkpointed: {r['act_mem_1000cls_ours_checkpointed_mb']:.0f} MB) | "
        f"{r['act_mem_1000cls_reference_mb']:.0f} MB | {r['act_mem_1000cls_ours_mb']:.0f} MB | "
        f"{r['act_mem_1000cls_reference_mb'] / max(r['act_mem_1000cls_ours_mb'], 1e-9):.2f}x |",
        f"| CoCoOp step, batch 1, {r['cocoop_classes']} classes | {r['cocoop_step_s_reference']:.2f} s | "
        f"{r['cocoop_step_s_ours']:.2f} s | {_ratio(r, 'cocoop_step_ratio')} |",
        f"| CoCoOp step, batch 32, {r['cocoop_classes']} classes | {r['cocoop_step_s_reference_b32']:.2f} s | "
        f"{r['cocoop_step_s_ours_b32']:.2f} s | {_ratio(r, 'cocoop_step_ratio_b32')} |",
        f"| CoCoOp activations kept, batch 32 | {r['cocoop_act_mem_reference_mb']:.0f} MB | "
        f"{r['cocoop_act_mem_ours_mb']:.0f} MB | "
        f"{r['cocoop_act_mem_reference_mb'] / max(r['cocoop_act_mem_ours_mb'], 1e-9):.2f}x |",
        "",
        f"logits max abs diff, ours vs reference: {r['logits_max_abs_diff']:.2e} "
        f"({r['logits_max_rel_diff']:.1e} of the largest; "
        f"{'same logits within float rounding' if r['logits_max_rel_diff'] <= 1e-5 else 'MISMATCH'})",
        "targets: " + ", ".join(f"{name} ({'met' if ok else 'NOT met'})" for name, ok in targets(r)),
    ]
    return "\n".join(rows)


def targets(r: dict) -> list[tuple[str, bool]]:
    """The performance targets (issue #17) and whether this run meets them."""
    return [
        ("train exact >= 1.8x", r["train_step_ratio_exact"] >= 1.8),
        ("cached views >= 6x", r["train_step_ratio_cached"] >= 6),
        ("text side >= 6x", r["text_step_ratio"] >= 6),
        ("activations at 1000 classes <= 1/4 of the reference",
         r["act_mem_1000cls_ours_mb"] <= r["act_mem_1000cls_reference_mb"] / 4),
        ("CoCoOp step >= 3x", r["cocoop_step_ratio"] >= 3),
        ("eval warm >= 20x", r["eval_ratio_warm"] >= 20),
        ("eval cold > 1x", r["eval_ratio_cold"] > 1),
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prompt-tuning bench", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="--debug anywhere on the command line shows tracebacks of user errors")
    p.add_argument("--method", default="coop", choices=("coop", "maple", "promptsrc"),
                   help="coop: CoOp's step and evaluation; maple, promptsrc: a step with prompts in both towers")
    p.add_argument("--classes", type=int, default=None,
                   help="classes of the synthetic task (prompts per step); default 100, with --whole-run 20")
    p.add_argument("--shots", type=int, default=16, help="for the projected epoch time")
    p.add_argument("--model", default="ViT-B-16",
                   help="open_clip architecture, or an architecture .json (random weights either way)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of each comparison, the paths taking turns (median of the paired ratios)")
    p.add_argument("--cocoop-classes", type=int, default=10, help="classes of the CoCoOp steps (B x C prompts)")
    p.add_argument("--eval-batch", type=int, default=25, help="images per evaluation batch")
    p.add_argument("--whole-run", action="store_true",
                   help="one CoOp run end to end on generated JPEGs (prompt_tuning.apps.bench_run), ours against "
                        "the authors' path")
    p.add_argument("--epochs", type=int, default=2, help="--whole-run: training epochs of each path")
    p.add_argument("--test-images", type=int, default=None,
                   help="test images of the evaluation (default 50), or test JPEGs of --whole-run (default 200)")
    p.add_argument("--workers", type=int, default=2, help="--whole-run: data-loader workers of each path")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.classes is None:
        args.classes = 20 if args.whole_run else 100
    if args.test_images is None:
        args.test_images = 200 if args.whole_run else 50
    for flag in ("classes", "shots", "repeats", "eval_batch", "cocoop_classes", "epochs",
                 "test_images"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: expected an integer >= 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.workers < 0:
        p.error(f"--workers={args.workers}: expected an integer >= 0")
    if args.whole_run:
        from prompt_tuning.apps.bench_run import format_whole_run, run_whole

        try:
            r = run_whole(args.classes, args.shots, args.test_images, args.model, args.epochs, workers=args.workers,
                          device=args.device, log=log)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_whole_run(r))
        if args.json:
            from prompt_tuning.core.files import write_json

            write_json(args.json, r)
        return 0
    try:
        if args.method == "coop":
            r = run(args.classes, args.shots, args.model, args.device, args.repeats,
                    test_images=args.test_images, eval_batch=args.eval_batch, log=log,
                    cocoop_classes=args.cocoop_classes)
        else:
            r = run_multimodal(args.method, args.classes, args.model, args.device, args.repeats, log=log)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(r) if args.method == "coop" else format_multimodal_report(r))
    if args.json:
        from prompt_tuning.core.files import write_json

        write_json(args.json, r)
    diff = r["logits_max_rel_diff"] if args.method == "coop" else r["text_features_max_abs_diff"]
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
