"""The prompt methods' defining properties, checked with numbers: CoCoOp's per-image prompts, KgCoOp's knowledge
term, ProGrad's aligned gradient and its manual optimisation, Bayesian prompts' samples, KL and per-image test
draws, and ECO's collapsed ensemble."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from prompt_tuning.methods.base import Outputs, Task
from prompt_tuning.methods.contexts.bayesian import BayesianContext, ConditionalBayesianContext, gaussian_kl
from prompt_tuning.methods.contexts.cocoop import CoCoOp
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.methods.contexts.ensemble import ECO
from prompt_tuning.methods.gradients import ProGrad, project
from prompt_tuning.methods.objectives import KnowledgeGuided, MonteCarloLikelihood, ZeroShotDistillation
from prompt_tuning.runs.module import PromptTuner
from prompt_tuning.runs.schedules import WarmupCosine
from tests.conftest import build_tiny
from tests.helpers import image_loader

TASK = Task(("red circle", "blue square", "green triangle"), "a photo of a {}.")




def _images(clip, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return clip.encode_images(torch.randn(n, 3, 32, 32, generator=g))


# ------------------------------------------------------------------------------------------------ CoCoOp
def test_cocoop_prompts_differ_per_image_and_reduce_to_coop_without_bias(tiny_clip):
    torch.manual_seed(0)
    ctx = CoCoOp(tiny_clip, TASK)
    img = _images(tiny_clip, 2)
    prompts = ctx(img).embeddings
    assert prompts.shape[:2] == (2, 3)
    assert not torch.equal(prompts[0], prompts[1])
    with torch.no_grad():  # a meta-net that outputs zero gives CoOp's prompts for every image
        ctx.meta_net.linear2.weight.zero_()
        ctx.meta_net.linear2.bias.zero_()
    coop = CoOp(tiny_clip, TASK, ctx_init="a photo of a")
    assert torch.equal(ctx(img).embeddings[1], coop().embeddings[0])


def test_cocoop_meta_net_shape(tiny_clip):
    ctx = CoCoOp(tiny_clip, TASK, reduction=16)
    d = tiny_clip.embed_dim
    assert ctx.meta_net.linear1.weight.shape == (d // 16, d)
    assert ctx.meta_net.linear2.weight.shape == (tiny_clip.width, d // 16)


def test_conditional_evaluation_in_chunks_equals_one_pass(tiny_clip):
    torch.manual_seed(0)
    module = PromptTuner(tiny_clip, CoCoOp(tiny_clip, TASK), TASK)
    img = _images(tiny_clip, 5)
    with torch.no_grad():
        whole = module(img).logits
        module.eval_chunk = 2 * len(TASK.classnames)  # 2 images per text pass
        chunked = module._eval_logits(img)
    assert torch.allclose(whole, chunked, atol=1e-5)  # other text-pass batch sizes round differently


# ------------------------------------------------------------------------------------------------ KgCoOp
def test_kgcoop_loss_is_ce_plus_weight_times_distance_and_zero_at_init(tiny_clip):
    torch.manual_seed(0)
    context = CoOp(tiny_clip, TASK, ctx_init="a photo of a")
    objective = KnowledgeGuided(tiny_clip, TASK, weight=8.0)
    module = PromptTuner(tiny_clip, context, TASK, objective)
    labels = torch.tensor([0, 1, 2, 0])
    outputs = module(_images(tiny_clip))
    terms = module.loss_terms(outputs, labels)
    assert terms["kg"].abs().item() < 1e-6  # learned = hand-crafted features at initialisation
    assert torch.allclose(terms["ce"], F.cross_entropy(outputs.logits[0], labels))

    with torch.no_grad():
        context.ctx.add_(0.5 * torch.randn_like(context.ctx))
    outputs = module(_images(tiny_clip))
    terms = module.loss_terms(outputs, labels)
    learned = outputs.text_features[0]
    zs = tiny_clip.encode_text(TASK.prompts())
    sq_dist = (learned - zs).pow(2).sum(-1).mean()
    assert terms["kg"].item() > 1e-3
    assert torch.allclose(terms["kg"], 8.0 * (1 - F.cosine_similarity(learned, zs).mean()), atol=1e-6)
    assert torch.allclose(terms["kg"], 8.0 / 2 * sq_dist, atol=1e-5)  # the paper's squared L2 form


# ----------------------------------------------------------------------------------------------- ProGrad
def test_project_keeps_agreeing_gradients_and_removes_conflicts():
    g, k = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    assert torch.equal(project(g, k), g)
    g = torch.tensor([-1.0, 2.0])
    out = project(g, k)
    assert torch.allclose(out, torch.tensor([0.0, 2.0]))
    assert torch.dot(out, k) >= 0
    assert torch.allclose(project(g, k, lam=0.5), torch.tensor([-0.5, 2.0]))


def _prograd_module(clip, seed):
    torch.manual_seed(seed)
    context = CoOp(clip, TASK, n_ctx=4)
    with torch.no_grad():
        context.ctx.normal_(std=0.5)
    return PromptTuner(clip, context, TASK, ZeroShotDistillation(clip, TASK), ProGrad(lam=1.0))


@pytest.mark.parametrize("seed", range(6))
def test_prograd_applied_gradient_never_opposes_the_kl_gradient(tiny_clip, seed):
    module = _prograd_module(tiny_clip, seed)
    labels = torch.tensor([0, 1, 2, 1])
    params = [module.method.ctx]
    terms = module.loss_terms(module(_images(tiny_clip, seed=seed)), labels)
    g_ce = torch.autograd.grad(terms["ce"], params, retain_graph=True)[0]
    g_kl = torch.autograd.grad(terms["kl"], params, retain_graph=True)[0]
    module.gradient_rule(terms, params)
    applied = module.method.ctx.grad
    assert torch.dot(applied.flatten(), g_kl.flatten()) >= -1e-6 * g_kl.norm() * g_ce.norm()
    if torch.dot(g_ce.flatten(), g_kl.flatten()) >= 0:
        assert torch.equal(applied, g_ce)
    else:
        expected = g_ce - torch.dot(g_ce.flatten(), g_kl.flatten()) / g_kl.pow(2).sum() * g_kl
        assert torch.allclose(applied, expected, atol=1e-7)


def test_prograd_kl_term_is_soft_target_cross_entropy(tiny_clip):
    objective = ZeroShotDistillation(tiny_clip, TASK, temperature=2.0)
    module = PromptTuner(tiny_clip, CoOp(tiny_clip, TASK, n_ctx=4), TASK, objective)
    out = module(_images(tiny_clip))
    zs = tiny_clip.logit_scale * out.image_features @ tiny_clip.encode_text(TASK.prompts()).T
    expected = -(F.softmax(zs / 2, -1) * F.log_softmax(out.logits[0] / 2, -1)).sum(-1).mean() * 4
    assert torch.allclose(objective(out, torch.tensor([0, 1, 2, 0]))["kl"], expected, atol=1e-5)


def test_prograd_trains_with_manual_optimisation_and_steps_the_schedule(tiny_clip):
    module = _prograd_module(tiny_clip, 0)
    module.max_epochs, module.schedule = 3, WarmupCosine(warmup_epochs=1)
    before = module.method.ctx.detach().clone()
    data = image_loader(n=8, n_cls=3, batch=4)
    lrs = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[Record()]).fit(module, train_dataloaders=data)
    assert not torch.equal(module.method.ctx.detach(), before)
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(0.002) and lrs[2] < lrs[1]


# ---------------------------------------------------------------------------------------------- Bayesian
def test_gaussian_kl_is_analytic_and_positive():
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    ours = gaussian_kl(mu, logvar)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ours >= 0).all() and gaussian_kl(torch.zeros(2), torch.zeros(2)).abs().max() == 0


@pytest.mark.parametrize("cls", [BayesianContext, ConditionalBayesianContext])
def test_bayesian_samples_kl_and_determinism(tiny_clip, cls):
    torch.manual_seed(0)
    ctx = cls(tiny_clip, TASK, n_samples=5, kl_weight=0.01)
    module = PromptTuner(tiny_clip, ctx, TASK, MonteCarloLikelihood())
    img = _images(tiny_clip, 3)
    out = module(img)
    assert out.logits.shape == (5, 3, 3)  # (samples, images, classes)
    mu, logvar = ctx.posterior(img)
    assert torch.allclose(out.aux_loss, 0.01 * gaussian_kl(mu, logvar).mean())
    assert out.aux_loss > 0
    assert not torch.equal(out.logits[0], out.logits[1])  # samples differ

    torch.manual_seed(7)
    a = module.predict_proba(module(img).logits)
    torch.manual_seed(7)
    b = module.predict_proba(module(img).logits)
    assert torch.equal(a, b)  # deterministic under a fixed seed
    logits = module(img).logits
    assert torch.allclose(module.predict_proba(logits), logits.softmax(-1).mean(0))


def test_monte_carlo_likelihood_is_log_mean_exp(tiny_clip):
    logits = torch.randn(4, 3, 5)
    labels = torch.tensor([0, 4, 2])
    out = Outputs(logits, torch.zeros(3, 2), torch.zeros(4, 5, 2))
    p = logits.softmax(-1)[:, torch.arange(3), labels]  # (M, B)
    expected = -p.mean(0).log().mean()
    assert torch.allclose(MonteCarloLikelihood()(out, labels)["nll"], expected, atol=1e-6)
    mean_ce = MonteCarloLikelihood("mean_ce")(out, labels)["nll"]
    assert torch.allclose(mean_ce, -logits.log_softmax(-1)[:, torch.arange(3), labels].mean(), atol=1e-6)


def test_bayesian_context_draws_per_test_image_at_any_batch_size(tiny_clip):
    task = Task(tuple(f"class {i}" for i in range(5)))
    torch.manual_seed(0)
    module = PromptTuner(tiny_clip, BayesianContext(tiny_clip, task, n_samples=3), task).eval()
    image = torch.nn.functional.normalize(torch.randn(1, tiny_clip.embed_dim), dim=-1)
    batch = image.repeat(6, 1)  # the same image six times in one evaluation batch
    with torch.no_grad():
        module._start_eval()
        logits = module._eval_logits(batch)
    assert logits.shape == (3, 6, 5)
    # rows of one batched product may round differently (BLAS): "the same" is within float rounding, and
    # "independent draws" differ by far more than that
    rounding = 1e-5 * logits.abs().max()
    assert all((logits[:, 0] - logits[:, i]).abs().max() > 1e3 * rounding for i in range(1, 6))  # six draws
    module.train()  # training shares one draw per batch (the authors train with batch 1)
    with torch.no_grad():
        train_logits = module(batch).logits
    assert all((train_logits[:, 0] - train_logits[:, i]).abs().max() <= rounding for i in range(1, 6))


# --------------------------------------------------------------------------------------------------- ECO
def test_eco_collapsed_weights_equal_the_ensemble_average(tiny_clip):
    torch.manual_seed(0)
    eco = ECO(tiny_clip, TASK, n_prompts=3, n_ctx=2)
    weights, _ = eco.text_features(tiny_clip)
    assert weights.shape == (1, 3, tiny_clip.embed_dim)
    members = []
    for k in range(3):
        single = CoOp(tiny_clip, TASK, n_ctx=2)
        with torch.no_grad():
            single.ctx.copy_(eco.ctx[k])
        members.append(single.text_features(tiny_clip)[0][0])
    expected = F.normalize(torch.stack(members).mean(0), dim=-1)
    assert torch.allclose(weights[0], expected, atol=1e-6)


def test_eco_inference_runs_the_text_encoder_once_per_evaluation_not_per_batch(monkeypatch):
    clip = build_tiny()
    module = PromptTuner(clip, ECO(clip, TASK, n_prompts=4, n_ctx=2), TASK)
    calls = []
    original = clip.encode_prompts
    monkeypatch.setattr(clip, "encode_prompts", lambda *a, **k: calls.append(1) or original(*a, **k))
    batches = image_loader(n=20, n_cls=3, batch=4)  # 5 test batches
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=batches, verbose=False)
    assert len(calls) == 1  # at the start of the evaluation; zero per test batch

