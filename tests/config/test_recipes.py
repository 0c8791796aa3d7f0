"""The authors' recipes: every run of every paper experiment composes to the values the authors ran (written once
below from their files), per dataset and protocol for Bayesian prompts; where each recipe value came from
(``--print-config``, ``sweep --dry-run``); the command line over recipes; every method's initial context; and the
``reference`` precision."""

import pytest
import torch
from omegaconf import OmegaConf

from prompt_tuning.apps.cli import main
from prompt_tuning.config.compose import compose, compose_annotated
from prompt_tuning.config.experiment import expand, load_experiment
from prompt_tuning.config.instantiate import instantiate
from prompt_tuning.methods.base import Method, Task
from prompt_tuning.runs.build import max_epochs
from prompt_tuning.runs.trainer import resolve_precision
from tests.conftest import REPO, TINY_DEEP_ARCH

# ------------------------------------------------------------------------------ the authors' values, once
COOP_FEWSHOT_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}  # CoOp COOP.md: rn50_ep50 / _ep100 / rn50
KGCOOP_TEMPLATES = {  # htyao89/KgCoOp trainers/kgcoop.py CUSTOM_TEMPLATES
    "oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.", "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
}
PROGRAD_TEMPLATES = {  # BeierZhu/Prompt-align ProGrad.public/trainers/prograd.py CUSTOM_TEMPLATES
    "oxford_pets": "a type of pet, a photo of a {}.", "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.", "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.", "food101": "a type of food, a photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
BPL_B2N = {  # saic-fi/Bayesian-Prompt-Learning VPT.md: (Monte-Carlo samples L, epochs)
    "caltech101": (20, 20), "oxford_pets": (40, 20), "stanford_cars": (20, 40), "oxford_flowers": (10, 40),
    "food101": (20, 20), "fgvc_aircraft": (10, 10), "sun397": (20, 10), "dtd": (40, 10), "eurosat": (20, 60),
    "ucf101": (5, 20), "imagenet": (10, 10),
}
TRANSFER = ("cross_dataset", "domain_generalization")
TIP = {  # gaopengcuhk/Tip-Adapter configs/<dataset>.yaml: (search_scale [beta, alpha], init_alpha, train_epoch)
    "caltech101": ([12, 5], 3, 20), "dtd": ([13, 13], 2, 20), "eurosat": ([12, 10], 2, 100),
    "fgvc_aircraft": ([30, 30], 5, 20), "food101": ([10, 10], 1.17, 20), "imagenet": ([7, 3], 1.17, 20),
    "oxford_flowers": ([50, 50], 10, 20), "oxford_pets": ([7, 3], 1.17, 20), "stanford_cars": ([20, 10], 3, 20),
    "sun397": ([12, 10], 1.17, 20), "ucf101": ([7, 3], 3, 20),
}
TIP_IMAGENET_TEMPLATES = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                          "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def authors(method: str, protocol: str, dataset: str, shots: int) -> dict:
    """What the authors ran: dotted config key -> value (``epochs`` is the effective number of epochs)."""
    ctx, obj, rule = "method.context.init_args.", "method.objective.init_args.", "method.gradient_rule.init_args."
    if method == "coop":
        if protocol == "fewshot":
            out = {ctx + "n_ctx": 16, ctx + "ctx_init": None, "epochs": COOP_FEWSHOT_EPOCHS[shots]}
        else:
            out = {ctx + "n_ctx": 4, ctx + "ctx_init": "a photo of a", "epochs": 200}
        if dataset == "imagenet":
            out["epochs"] = 50
        return {**out, "optim.lr": 0.002, "data.batch_size": 32, "protocol.shots": shots}
    if method == "cocoop":
        return {ctx + "n_ctx": 4, ctx + "ctx_init": "a photo of a", "epochs": 10, "optim.lr": 0.002,
                "data.batch_size": 1, "protocol.shots": shots}
    if method == "kgcoop":
        return {ctx + "n_ctx": 4, ctx + "ctx_init": "a photo of a", obj + "weight": 8.0, "epochs": 100,
                obj + "template": KGCOOP_TEMPLATES.get(dataset, "a photo of a {}."), "optim.lr": 0.002,
                "data.batch_size": 128, "protocol.shots": 4 if protocol in TRANSFER else shots}
    if method == "prograd":
        template = PROGRAD_TEMPLATES.get(dataset, "a photo of a {}.")
        out = {ctx + "n_ctx": 16, ctx + "pad_init": True, ctx + "ctx_init": template.replace(" {}.", ""),
               obj + "template": template, obj + "temperature": 1.0, "optim.lr": 0.002, "data.batch_size": 32,
               rule + "lam": 0.8 if dataset in ("oxford_flowers", "dtd", "eurosat") and shots in (8, 16) else 1.0}
        if protocol == "base2novel":  # base2new_train_prograd.sh: 4 shots, LAMBDA=1.0
            return {**out, "protocol.shots": 4, rule + "lam": 1.0, "epochs": 50 if dataset == "imagenet" else 100}
        return {**out, "protocol.shots": shots, "epochs": COOP_FEWSHOT_EPOCHS[shots] if protocol == "fewshot"
                else 50}
    if method in ("bayesian", "bayesian_conditional"):
        samples, epochs = (10, 10) if protocol in TRANSFER else BPL_B2N[dataset] if protocol == "base2novel" \
            else (10, 40)
        return {ctx + "n_samples": samples, "epochs": epochs, "data.batch_size": 1, "optim.lr": 0.002,
                ctx + "kl_weight": 0.001}
    if method in ("tip_adapter", "tip_adapter_f"):
        scale, alpha, epochs = TIP[dataset]
        out = {ctx + "search_scale": scale, ctx + "search_steps": [200, 20], ctx + "alpha": alpha,
               ctx + "beta": 1.0, ctx + "augment_views": 10, ctx + "val": "full", "data.crop_scale": [0.5, 1.0],
               ctx + "templates": TIP_IMAGENET_TEMPLATES if dataset == "imagenet" else None,
               "protocol.shots": shots}
        if method == "tip_adapter_f":
            out.update({ctx + "fine_tune": True, "epochs": epochs, "optim.lr": 0.001,
                        "optim.optimizer.class_path": "torch.optim.AdamW", "optim.optimizer.init_args.eps": 1e-4,
                        "optim.scheduler.init_args.interval": "step", "optim.scheduler.init_args.warmup_epochs": 0,
                        "data.batch_size": 256, "data.drop_last": False})
        return out
    if method == "clip_adapter":  # clip_adapter.py (Adapter(1024, 4), ratio 0.2) in CoOp's trainer
        return {ctx + "reduction": 4, ctx + "ratio": 0.2, "optim.lr": 0.002, "data.batch_size": 32,
                "epochs": 50 if dataset == "imagenet" else COOP_FEWSHOT_EPOCHS[shots], "protocol.shots": shots}
    if method == "maple":  # multimodal-prompt-learning configs/trainers/MaPLe/*.yaml
        if protocol in TRANSFER:
            return {ctx + "n_ctx": 2, ctx + "depth": 3, "optim.lr": 0.0026, "epochs": 2, "data.batch_size": 4}
        return {ctx + "n_ctx": 2, ctx + "depth": 9, "optim.lr": 0.0035, "epochs": 5, "data.batch_size": 4,
                ctx + "ctx_init": "a photo of a"}
    if method == "ivlp":  # multimodal-prompt-learning configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml
        return {ctx + "n_ctx_text": 2, ctx + "n_ctx_vision": 2, ctx + "depth_text": 12, ctx + "depth_vision": 12,
                "optim.lr": 0.0035, "epochs": 5, "data.batch_size": 4, ctx + "ctx_init": "a photo of a"}
    if method == "promptsrc":  # PromptSRC configs/trainers/PromptSRC/*.yaml
        gpa, avg = (6.0, 10.0), "method.averaging.init_args."
        depth = 3 if protocol in TRANSFER else 9
        if protocol == "fewshot":
            gpa = (45.0, 5.0) if dataset in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd",
                                            "eurosat") else (30.0, 30.0)
        elif protocol not in TRANSFER:
            gpa = (15.0, 1.0)
        return {ctx + "n_ctx_text": 4, ctx + "n_ctx_vision": 4, ctx + "depth_text": depth, ctx + "depth_vision": depth,
                obj + "text_weight": 25.0, obj + "image_weight": 10.0, avg + "mean": gpa[0], avg + "std": gpa[1],
                "optim.lr": 0.0025, "epochs": 50 if protocol == "fewshot" else 20, "data.batch_size": 4,
                "protocol.shots": shots}
    if method == "linear_probe":  # lpclip/linear_probe.py: num_step 8, max_iter 1000; raw features
        return {ctx + "steps": 8, ctx + "max_iter": 1000, ctx + "normalize": False, "protocol.shots": shots}
    assert method == "zeroshot", method
    return {"protocol.shots": shots}


def _check(cfg, expected):
    for key, value in expected.items():
        got = max_epochs(cfg) if key == "epochs" else (
            cfg.protocol.shots if key == "protocol.shots" else OmegaConf.select(cfg, key))
        assert got == value, f"{key}: {got!r}, the authors ran {value!r}"


PAPER_EXPERIMENTS = [pytest.param("base2novel", marks=pytest.mark.slow),
                     pytest.param("coop_fewshot", marks=pytest.mark.slow),
                     pytest.param("promptsrc_fewshot", marks=pytest.mark.slow),
                     "cross_dataset", "domain_generalization"]


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_every_run_of_every_paper_experiment_composes_to_the_authors_values(name, paper_cwd, composed_runs,
                                                                            monkeypatch):
    monkeypatch.chdir(paper_cwd)
    exp = load_experiment(REPO / "experiments" / f"{name}.yaml")
    assert exp["published"]["source"] and (exp["published"]["values"] or name.endswith("fewshot"))
    runs = expand(exp)
    for run in runs:
        cfg = composed_runs([*run.args, "runtime.progress=false"]).cfg  # as a sweep composes it (compose_run)
        shots = int(run.choice.get("protocol.shots", 16))
        _check(cfg, authors(cfg.method.name, cfg.protocol.name, cfg.dataset.name, shots))
        assert cfg.output_dir.endswith(f"shots_{cfg.protocol.shots}/seed_{cfg.seed}")


@pytest.mark.parametrize("method, dataset, protocol", [
    (m, d, p) for m in ("bayesian", "bayesian_conditional") for d in sorted(BPL_B2N)
    for p in ("fewshot", "base2novel", "cross_dataset") if p != "cross_dataset" or d == "imagenet"
])
def test_bayesian_recipes_per_dataset_and_protocol(method, dataset, protocol):
    cfg = compose([f"method={method}", f"dataset={dataset}", f"protocol={protocol}", "model=tiny"])
    _check(cfg, authors(method, protocol, dataset, 16))


def test_print_config_shows_prograd_dtd_lambda_and_template_words_with_their_source(capsys):
    assert main(["train", "method=prograd", "dataset=dtd", "protocol=fewshot", "protocol.shots=16",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lam: 0.8  # BeierZhu/Prompt-align ProGrad.public/README.md" in out
    assert "ctx_init: a texture of  # BeierZhu/Prompt-align ProGrad.public/trainers/prograd.py" in out
    assert "template: a texture of {}.  # BeierZhu/Prompt-align" in out


def test_command_line_beats_recipes_and_selects_them():
    composed = compose_annotated(["method=prograd", "dataset=dtd", "protocol.shots=4", "model=tiny"])
    assert composed.cfg.method.gradient_rule.init_args.lam == 1.0  # 4 shots: the 0.8 recipe does not apply
    cfg = compose(["method=prograd", "dataset=dtd", "protocol.shots=16", "model=tiny",
                   "method.gradient_rule.init_args.lam=0.5"])
    assert cfg.method.gradient_rule.init_args.lam == 0.5
    assert composed.recipe_values["method.context.init_args.ctx_init"][0] == "a texture of"


def test_dry_run_lists_each_runs_recipe_values(capsys):
    assert main(["sweep", str(REPO / "experiments" / "base2novel.yaml"), "--dry-run", "--only", "dataset=dtd",
                 "--only", "method=prograd", "--only", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "recipe: " in out and "protocol.shots=4" in out and 'ctx_init="a texture of"' in out


def test_reference_precision_is_fp16_on_a_gpu_and_fp32_on_cpu(monkeypatch):
    assert resolve_precision("reference", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("reference", "auto") == "16-true"
    assert resolve_precision("reference", "cpu") == "32-true"


# ------------------------------------------------------------------------- initialisation, per method
# What the authors' released configs and trainers start the learned context from (sources: the table
# "Initialisation, precision and search split" of docs/methods.md): (number of vectors, the words or None for
# N(0, 0.02^2), words placed after zero vectors); per protocol where the protocols differ.
WORDS = "a photo of a"
AUTHORS_INIT = {
    "coop": {"fewshot": (16, None, False), "base2novel": (4, WORDS, False), "cross_dataset": (4, WORDS, False)},
    "coop_csc": {"fewshot": (16, None, False)},
    "cocoop": (4, WORDS, False), "kgcoop": (4, WORDS, False),
    "prograd": (16, WORDS, True),  # zeros, then the template's words (here the default template's)
    "bayesian": (4, WORDS, False), "bayesian_conditional": (4, WORDS, False),
    "eco": (4, None, False),  # unverified: no code released
    "deep_language": (4, WORDS, False),  # language_only.yaml:35-36
    "ivlp": (2, WORDS, False), "maple": (2, WORDS, False), "promptsrc": (4, WORDS, False),
}


@pytest.mark.parametrize("method", sorted(AUTHORS_INIT))
def test_every_method_starts_from_its_authors_initialisation(deep_clip, shapes_dir, method):
    expected = AUTHORS_INIT[method]
    for protocol in ("fewshot", "base2novel", "cross_dataset"):
        if isinstance(expected, dict) and protocol not in expected:
            continue
        n, words, padded = expected[protocol] if isinstance(expected, dict) else expected
        cfg = compose([f"model={TINY_DEEP_ARCH}", f"dataset={shapes_dir}", f"method={method}",
                       f"protocol={protocol}"])
        torch.manual_seed(0)
        context = instantiate(cfg.method.context, Method, "method.context.class_path", clip=deep_clip,
                              task=Task(("red circle", "blue square")))
        ctx = context.ctx.detach()
        ctx = ctx[0] if ctx.dim() == 3 else ctx  # ECO's first member, a class-specific context's first class
        assert ctx.shape[0] == n, f"{method} {protocol}: {ctx.shape[0]} vectors, the authors {n}"
        if words is None:
            assert 0.01 < ctx.std() < 0.03, f"{method} {protocol}: not N(0, 0.02^2)"
            continue
        embedded = deep_clip.token_embeddings(deep_clip.tokenize(words))[0, 1:1 + len(words.split())]
        if padded:
            assert torch.equal(ctx[-len(embedded):], embedded) and not ctx[:-len(embedded)].any(), method
        else:
            assert torch.equal(ctx, embedded[:n]), f"{method} {protocol}: not the embeddings of {words!r}"
