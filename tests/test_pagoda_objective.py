"""The PaGoDA objective in the training loop: who updates when, what the losses are, and exact resume."""

import math
import os

import pytest
import torch

from pagoda import logger
from pagoda.methods import gan
from pagoda.diffaug import DiffAugment
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import create_feature_network
from pagoda.generator import freeze_for_growth, generate, grow
from pagoda.losses import ReconstructionLoss, hinge_g_loss, weight_grad_norm
from pagoda.methods.pagoda import PaGoDAObjective
from pagoda.train_util import OptimSpec, TrainLoop
from pagoda.unet import UNetModel

SMALL = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
             num_head_channels=32, num_classes=4)


def _backbone(seed=0):
    torch.manual_seed(seed)
    net = UNetModel(**SMALL)
    for p in net.parameters():  # ADM zero-inits the output convs: randomise so every weight gets a gradient
        p.data.normal_(0, 0.3 / math.sqrt(max(1, p[0].numel())))
    return net


STAGE2 = dict(discriminator_weight=0.2, adaptive=True, separate_update=False, recon_adversary=None,
              recon_discriminator_weight=0.5, sigma_max=80.0, sigma_data=0.5, ema_rates=(0.999,), lineage=None)


def _objective(backbone, *, feature_seed=0, image_size=8, gan_loss="hinge", recon_d=False, **kw):
    """The objective with the tiny feature network; with `recon_d`, a reconstruction discriminator over D's
    feature networks."""
    aug = DiffAugment()
    disc = ProjectedDiscriminator(feature_networks={"tiny": create_feature_network("tiny", seed=feature_seed)},
                                  image_size=image_size, num_classes=4, channel_scale=0.25)
    rec = ReconstructionLoss(feature_networks={"tiny": create_feature_network("tiny", seed=feature_seed + 1)},
                             augment=aug)
    if recon_d:
        recon_disc = ProjectedDiscriminator(feature_networks=dict(disc.feature_networks), image_size=image_size,
                                            num_classes=4, channel_scale=0.25)
        kw["recon_adversary"] = gan.Adversary(recon_disc, augment=aug, gan_loss=gan_loss)
    return PaGoDAObjective(generator=backbone, adversary=gan.Adversary(disc, augment=aug, gan_loss=gan_loss),
                           reconstruction=rec, **{**STAGE2, **kw})


def _data(image_size=8):
    def stream(start):
        k = start
        while True:
            g = torch.Generator().manual_seed(k)
            yield {"x": torch.rand(4, 3, image_size, image_size, generator=g) * 2 - 1,
                   "z": torch.randn(4, 3, 8, 8, generator=g) * 80, "y": torch.randint(0, 4, (4,), generator=g)}
            k += 1
    return stream


def _loop(objective, run_dir, steps=2, image_size=8):
    logger.configure(None)
    return TrainLoop(objective=objective, data=_data(image_size), run_dir=str(run_dir), global_batch_size=4,
                     optim={"generator": OptimSpec(name="radam", lr=1e-3),
                            "discriminator": OptimSpec(name="radam", lr=1e-3)},
                     total_steps=steps, log_interval=100, save_interval=100)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed_params(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def test_generator_phase_changes_only_the_generator(tmp_path):
    obj = _objective(_backbone())
    loop = _loop(obj, tmp_path)
    g0, d0, d_state = _params(obj.generator), _params(obj.discriminator), _snapshot(obj.discriminator)
    rec0 = [_snapshot(n) for n in obj.reconstruction.feature_networks]
    loop.run_step()  # step 0: generator
    assert obj.phases(0) == ["generator"]
    assert _changed_params(g0, obj.generator) and not _changed_params(d0, obj.discriminator)
    assert all(p.grad is None for p in obj.discriminator.parameters())  # D was not even in the graph
    # D runs in train mode on the fakes, as in the official code: only its BatchNorm running statistics (never
    # used: D always trains with batch statistics) and spectral-norm power-iteration vectors advance
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked", "_u", "_v"))
               for k in _changed(d_state, obj.discriminator))
    assert all(not _changed(s, n) for s, n in zip(rec0, obj.reconstruction.feature_networks))


def test_discriminator_phase_changes_only_heads(tmp_path):
    obj = _objective(_backbone())
    loop = _loop(obj, tmp_path)
    loop.step = 1
    g0, d0 = _snapshot(obj.generator), _params(obj.discriminator)
    loop.run_step()  # step 1: discriminator
    changed = _changed_params(d0, obj.discriminator)
    assert changed and all(k.startswith("heads.") for k in changed)
    assert not _changed(g0, obj.generator)


def test_generator_loss_is_rec_plus_weighted_gan(tmp_path):
    obj = _objective(_backbone(), discriminator_weight=0.2)
    gen = torch.Generator().manual_seed(3)
    batch = next(_data()(0))
    terms = obj.losses("generator", {"generator": obj.generator}, batch, step=0, generator=gen)
    lam = terms["adaptive_weight"][0]
    assert 0.01 <= lam <= 10
    torch.testing.assert_close(terms["loss"], terms["rec"] + 0.2 * lam * terms["gan"])
    # the GAN term is on fresh prior latents, not on the encoded ones
    with torch.no_grad():
        x_data = generate(obj.generator, batch["z"], batch["y"]).float()
        g_data = hinge_g_loss(obj.discriminator(x_data, batch["y"]))
    assert not torch.allclose(g_data, terms["gan"])


def test_non_adaptive_weight_is_one(tmp_path):
    obj = _objective(_backbone(), adaptive=False)
    terms = obj.losses("generator", {"generator": obj.generator}, next(_data()(0)), step=0,
                       generator=torch.Generator().manual_seed(0))
    assert torch.all(terms["adaptive_weight"] == 1)


def test_separate_update_takes_two_generator_steps(tmp_path):
    obj = _objective(_backbone(), separate_update=True)
    assert obj.phases(0) == ["generator:rec", "generator:gan"] and obj.phases(1) == ["discriminator"]
    loop = _loop(obj, tmp_path)
    loop.run_step()
    assert loop.players["generator"].opt_steps == 2 and loop.batches_drawn == 2
    rec_terms = obj.losses("generator:rec", {"generator": obj.generator}, next(_data()(0)), step=0,
                           generator=torch.Generator().manual_seed(0))
    assert set(rec_terms) == {"loss", "rec", "psnr"}


def test_the_separate_gan_update_is_weighed_against_the_reconstruction_update_before_it():
    """lambda = clip(||dL_rec/dW|| / (||dL_adv/dW|| + 1e-4)) with ||dL_rec/dW|| from the "generator:rec" phase."""
    obj = _objective(_backbone(), separate_update=True, discriminator_weight=0.2)
    nets, batch, last = {"generator": obj.generator}, next(_data()(0)), obj.generator.adaptive_weight_layer().weight
    rec = obj.losses("generator:rec", nets, batch, step=0, generator=torch.Generator().manual_seed(0))["loss"]
    gan_terms = obj.losses("generator:gan", nets, batch, step=0, generator=torch.Generator().manual_seed(1))
    lam = gan_terms["adaptive_weight"][0]
    gan_norm = weight_grad_norm(gan_terms["loss"], last) / (0.2 * lam)  # the loss is 0.2 * lambda * L_adv
    torch.testing.assert_close(lam, (weight_grad_norm(rec, last) / (gan_norm + 1e-4)).clamp(0.01, 10.0))
    assert set(gan_terms) == {"loss", "gan", "adaptive_weight", "adaptive_at_clamp"}


def test_resume_restores_discriminator_and_projections(tmp_path):
    obj = _objective(_backbone())
    loop = _loop(obj, tmp_path, steps=3)
    loop.run()
    saved_d = _snapshot(obj.discriminator)
    saved_rec = [_snapshot(n) for n in obj.reconstruction.feature_networks]
    # a fresh process with other random projections and another generator init resumes the saved state
    other = _objective(_backbone(seed=7), feature_seed=50)
    resumed = _loop(other, tmp_path, steps=3)
    assert resumed.step == 3
    assert not _changed(saved_d, other.discriminator)
    assert all(not _changed(s, n) for s, n in zip(saved_rec, other.reconstruction.feature_networks))
    assert not _changed(_snapshot(obj.generator), other.generator)


def test_stage3_frozen_weights_are_bit_identical_after_training(tmp_path):
    grown, _ = grow(_backbone())
    freeze_for_growth(grown, activate_from=3)
    frozen = {n: p.detach().clone() for n, p in grown.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in grown.named_parameters() if p.requires_grad}
    obj = _objective(grown, image_size=16)
    loop = _loop(obj, tmp_path, steps=3, image_size=16)
    loop.run()
    assert frozen and all(torch.equal(frozen[n], p) for n, p in grown.named_parameters() if n in frozen)
    moved = {n for n, p in grown.named_parameters() if n in trainable and not torch.equal(trainable[n], p)}
    # the head and the new levels' zero-initialised output convs learn (per-channel biases feeding a GroupNorm
    # have exactly zero gradient, so not every trainable tensor moves)
    assert {"out.2.weight", "output_blocks.4.0.out_layers.3.weight", "output_blocks.6.0.out_layers.3.weight"} <= moved


def test_unknown_gan_loss():
    with pytest.raises(ValueError, match="gan_loss must be one of"):
        _objective(_backbone(), gan_loss="wasserstein")


def test_monitor_metric_is_logged_in_the_same_row(tmp_path):
    import csv

    from pagoda.callbacks import GeneratorMetric

    seen = []

    def metric_fn(images):
        seen.append(tuple(images.shape))
        return {"fd_toy": float(images.mean())}

    obj = _objective(_backbone())
    logger.configure(str(tmp_path))
    loop = TrainLoop(objective=obj, data=_data(), run_dir=str(tmp_path), global_batch_size=4, total_steps=2,
                     log_interval=2, save_interval=100,
                     callbacks=[GeneratorMetric(interval=2, metric_fn=metric_fn, num_samples=6, num_classes=4)])
    loop.run()
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert seen == [(6, 3, 8, 8)] and rows[-1]["step"] == "2" and rows[-1]["monitor/fd_toy"] != ""


def test_interval_zero_never_calls_the_callback(tmp_path):
    from pagoda.callbacks import GeneratorPreview

    calls = []
    preview = GeneratorPreview(interval=0, num_classes=4, num_samples=2)
    preview.sample = lambda net, device: calls.append(1)
    logger.configure(str(tmp_path))
    TrainLoop(objective=_objective(_backbone()), data=_data(), run_dir=str(tmp_path), global_batch_size=4,
              total_steps=3, log_interval=3, save_interval=100, callbacks=[preview]).run()
    assert calls == [] and not os.path.exists(tmp_path / "samples")
    with pytest.raises(ValueError, match="0: never"):
        GeneratorPreview(interval=-1, num_classes=4)


def _with_recon_d(**kw):
    return _objective(_backbone(), recon_d=True, **kw)


def test_recon_discriminator_follows_every_generator_step(tmp_path):
    obj = _with_recon_d()
    assert obj.phases(0) == ["generator", "recon_discriminator"] and obj.phases(1) == ["discriminator"]
    assert _with_recon_d(separate_update=True).phases(0) == ["generator:rec", "generator:gan", "recon_discriminator"]
    loop = _loop(obj, tmp_path)
    r0, d0 = _params(obj.recon_discriminator), _params(obj.discriminator)
    loop.run_step()
    changed = _changed_params(r0, obj.recon_discriminator)
    assert changed and all(k.startswith("heads.") for k in changed)
    assert not _changed_params(d0, obj.discriminator)  # the GAN discriminator waits for its own step
    # the two discriminators share the frozen feature networks
    assert obj.recon_discriminator.feature_networks["tiny"] is obj.discriminator.feature_networks["tiny"]


def test_generator_loss_adds_the_weighted_recon_gan_term():
    obj = _with_recon_d(discriminator_weight=0.2)
    terms = obj.losses("generator", {"generator": obj.generator}, next(_data()(0)), step=0,
                       generator=torch.Generator().manual_seed(1))
    lam, lam_r = terms["adaptive_weight"][0], terms["recon_adaptive_weight"][0]
    torch.testing.assert_close(terms["loss"], terms["rec"] + 0.2 * lam * terms["gan"] + 0.5 * lam_r * terms["recon_gan"])


@pytest.mark.parametrize("with_recon_d", [False, True])
def test_gan_terms_backpropagate_the_discriminator_once_with_the_same_generator_gradients(monkeypatch, with_recon_d):
    """The GAN terms reach G through a surrogate whose graph ends at G's output (gan.through_output): the
    loss terms, the adaptive weights and every generator gradient are those of the plain graph (here: the surrogate
    patched out), and no discriminator weight gets a gradient. D has BatchNorm, so samples interact through it."""
    def run():
        kw = dict(discriminator_weight=0.2)
        obj = _with_recon_d(**kw) if with_recon_d else _objective(_backbone(), **kw)
        terms = obj.losses("generator", {"generator": obj.generator}, next(_data()(0)), step=0,
                           generator=torch.Generator().manual_seed(1))
        terms["loss"].mean().backward()
        discriminators = [obj.discriminator] + ([obj.recon_discriminator] if with_recon_d else [])
        assert all(p.grad is None for d in discriminators for p in d.parameters())
        return terms, {k: p.grad for k, p in obj.generator.named_parameters()}

    terms, grads = run()
    monkeypatch.setattr(gan, "through_output", lambda loss, x: loss)
    plain_terms, plain_grads = run()
    keys = ("loss", "rec", "gan", "adaptive_weight") + (("recon_gan", "recon_adaptive_weight") if with_recon_d else ())
    for key in keys:
        torch.testing.assert_close(terms[key], plain_terms[key], rtol=1e-5, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_gan_surrogate_is_off_under_fp16_autocast():
    x = torch.randn(3, 2, requires_grad=True)
    loss = (x ** 3).sum(1)
    with torch.autocast("cpu", dtype=torch.float16):
        assert gan.through_output(loss, x) is loss
    surrogate = gan.through_output(loss, x)
    torch.testing.assert_close(surrogate, loss.detach())
    (grad,) = torch.autograd.grad(surrogate.sum(), x)
    torch.testing.assert_close(grad, 3 * x.detach() ** 2)


def test_diagnostics_read_a_perfect_a_reversed_and_a_split_discriminator():
    """Accuracy counts a real whose mean logit is > 0 and a fake whose mean logit is < 0; per head likewise."""
    names = ["net_0", "net_1"]
    real = [torch.full((3, 4), 2.0), torch.full((3, 1), 1.0)]
    fake = [torch.full((3, 4), -1.0), torch.full((3, 1), -3.0)]
    perfect = gan.discriminator_diagnostics(real, fake, names)
    assert perfect["accuracy"].tolist() == [1.0] * 6 and perfect["logit_gap"].tolist() == [3.5] * 3
    assert perfect["accuracy_net_0"].mean() == 1 and perfect["accuracy_net_1"].mean() == 1
    reversed_ = gan.discriminator_diagnostics(fake, real, names)
    assert reversed_["accuracy"].mean() == 0 and reversed_["logit_gap"].tolist() == [-3.5] * 3
    split = gan.discriminator_diagnostics([real[0], -real[1]], [fake[0], -fake[1]], names)
    assert split["accuracy_net_0"].mean() == 1 and split["accuracy_net_1"].mean() == 0
    # overall, heads averaged: reals (2 - 1) / 2 = 0.5 > 0 count, fakes (-1 + 3) / 2 = 1 > 0 do not
    assert split["accuracy"].tolist() == [1.0] * 3 + [0.0] * 3
    assert split["logit_gap"].tolist() == [0.5 - 1.0] * 3


def test_objective_logs_accuracy_per_head_and_the_adaptive_clamp(tmp_path):
    obj = _objective(_backbone())
    d_terms = obj.losses("discriminator", obj.players, next(_data()(0)), step=1, generator=torch.Generator())
    heads = gan.head_names(obj.discriminator)
    assert heads == [f"tiny_{k}" for k in range(len(obj.discriminator.heads["tiny"]))]
    for key in ["accuracy"] + [f"accuracy_{h}" for h in heads]:
        assert d_terms[key].shape == (8,) and set(d_terms[key].tolist()) <= {0.0, 1.0}
    assert torch.allclose(d_terms["logit_gap"], d_terms["logits_real"] - d_terms["logits_fake"])
    g_terms = obj.losses("generator", obj.players, next(_data()(0)), step=0, generator=torch.Generator())
    lam = g_terms["adaptive_weight"][0].item()
    assert g_terms["adaptive_at_clamp"].tolist() == [float(lam <= 0.01 or lam >= 10.0)] * 4
    fixed = _objective(_backbone(), adaptive=False)
    g_fixed = fixed.losses("generator", fixed.players, next(_data()(0)), step=0, generator=torch.Generator())
    assert g_fixed["adaptive_weight"].tolist() == [1.0] * 4 and g_fixed["adaptive_at_clamp"].tolist() == [0.0] * 4
