"""GDD / GDD-I: the generator is the teacher's denoiser at sigma_max, trained by the shared GAN part alone;
GDD-I's frozen set; lazy R1 and its Adam correction; exports that sample and score like any other."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda import checkpoint, logger
from pagoda.diffaug import DiffAugment
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import create_feature_network
from pagoda.generator import generate
from pagoda.methods import gan, gdd
from pagoda.model_io import load_generator
from pagoda.precond import Denoiser
from pagoda.train_util import OptimSpec, TrainLoop
from pagoda.unet import UNetModel, imagenet64_config
from tests.helpers.exports import TINY, tiny_export
from tests.helpers.methods import entry
from tests.helpers.tiny_runs import tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden", "gdd_i_frozen_imagenet64.txt")
GDD_FLAGS = ["--feature_networks", "tiny", "--d_channel_scale", "0.25", "--global_batch_size", "4",
             "--lr_generator", "1e-3", "--lr_discriminator", "1e-3", "--total_steps", "2", "--save_interval", "2",
             "--log_interval", "1", "--preview_interval", "0"]


def test_gdd_i_frozen_set_on_the_imagenet64_unet_is_the_golden_list():
    with torch.device("meta"):
        net = UNetModel(**imagenet64_config())
    names = gdd.frozen_convs(net)
    lines = [line for line in open(GOLDEN).read().splitlines() if line and not line.startswith("#")]
    count = int(open(GOLDEN).readline().split("frozen parameters: ")[1].split()[0].replace(",", ""))
    assert names == lines
    trainable, frozen = gdd.freeze(net, "convs")
    assert frozen == count and frozen == sum(dict(net.named_parameters())[n].numel() for n in names)
    # what it means: every ResBlock's two 3x3 convs and every attention output projection, nothing else
    assert all(n.rsplit(".", 2)[-2] in ("2", "3", "proj_out") for n in names)
    assert not any(k in n for n in names for k in ("qkv", "skip_connection", "emb_layers", "norm", "time_embed",
                                                   "label_emb"))
    assert "input_blocks.0.0.weight" not in names and "out.2.weight" not in names
    # 78.8% of the ADM network (D2O-F's "about 85%" is not what the rule gives on this architecture)
    assert round(frozen / (frozen + trainable), 3) == 0.788


def test_gdd_freeze_none_trains_everything_and_rejects_unknown_kinds():
    net = UNetModel(**TINY)
    assert gdd.freeze(net, "none") == (sum(p.numel() for p in net.parameters()), 0)
    with pytest.raises(ValueError, match="freeze must be one of none, convs, got 'all'"):
        gdd.freeze(net, "all")


def test_lazy_regularisation_correction_is_stylegan2s():
    lr, betas = gan.lazy_regularised(4e-5, (0.0, 0.99), 16)
    assert lr == pytest.approx(4e-5 * 16 / 17) and betas == (0.0, pytest.approx(0.99 ** (16 / 17)))


def _adversary(r1_gamma=0.5, r1_interval=4):
    torch.manual_seed(0)
    d = ProjectedDiscriminator(feature_networks={"tiny": create_feature_network("tiny", seed=0)}, image_size=8,
                               num_classes=4, channel_scale=0.25, norm="group")
    return gan.Adversary(d, augment=DiffAugment(policy=()), gan_loss="nonsaturating", r1_gamma=r1_gamma,
                         r1_interval=r1_interval)


def test_lazy_r1_is_its_autograd_definition_scaled_by_the_interval_on_its_steps_only():
    adversary = _adversary()
    adversary.discriminator.eval()  # spectral norm's power iteration would move D between the calls
    x, fake = torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(3, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2])
    on = adversary.discriminator_terms(adversary.player, x, fake, y, d_step=8)
    off = adversary.discriminator_terms(adversary.player, x, fake, y, d_step=9)
    real = x.clone().requires_grad_(True)
    total = sum(l.sum() for l in adversary.discriminator(real, y))  # sum over heads and patches
    (grad,) = torch.autograd.grad(total, real)
    by_hand = grad.square().flatten(1).sum(1)
    torch.testing.assert_close(on["r1"], by_hand)
    torch.testing.assert_close(on["loss"], off["loss"] + 0.5 * 0.5 * 4 * by_hand)
    assert "r1" not in off
    torch.testing.assert_close(off["loss"], off["gan_d"])


def test_gdd_generator_is_the_teachers_denoiser_at_sigma_max():
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([1, 3])
    out = generate(net, z, y, sigma_max=80.0, sigma_data=0.5, output="denoised")
    torch.testing.assert_close(out, Denoiser(net)(z, 80.0, y))
    raw = generate(net, z, y, sigma_max=80.0, sigma_data=0.5)
    c_skip, c_out = 0.25 / (6400.25), 80 * 0.5 / 6400.25 ** 0.5
    torch.testing.assert_close(out, c_skip * z + c_out * raw)
    with pytest.raises(ValueError, match="output must be raw or denoised"):
        generate(net, z, y, output="x0")


def test_each_step_updates_the_generator_then_the_discriminator(tmp_path):
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    gdd.freeze(net, "convs")
    adversary = _adversary(r1_gamma=1e-4, r1_interval=16)
    obj = gdd.GDDObjective(generator=net, adversary=adversary, sigma_max=80.0, sigma_data=0.5, ema_rates=(),
                           lineage=None)
    assert obj.phases(0) == obj.phases(1) == ["generator", "discriminator"]

    def data(start):  # real images and labels only: no latents
        k = start
        while True:
            g = torch.Generator().manual_seed(k)
            yield {"x": torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, "y": torch.randint(0, 4, (4,), generator=g)}
            k += 1

    logger.configure(None)
    loop = TrainLoop(objective=obj, data=data, run_dir=str(tmp_path), global_batch_size=4, total_steps=1,
                     optim={"generator": OptimSpec(lr=1e-2, betas=(0.0, 0.99)),
                            "discriminator": OptimSpec(lr=1e-2, betas=(0.0, 0.99))},
                     log_interval=100, save_interval=100)
    before_g = {k: v.clone() for k, v in net.state_dict().items()}
    before_d = {k: v.clone() for k, v in adversary.discriminator.heads.state_dict().items()}
    loop.run_step()
    moved = {k for k, v in net.state_dict().items() if not torch.equal(v, before_g[k])}
    frozen = set(gdd.frozen_convs(net))
    assert moved and not moved & frozen  # GDD-I: the frozen convs never move
    assert "emb_layers" in " ".join(moved) and "qkv" in " ".join(moved)
    assert any(not torch.equal(v, before_d[k]) for k, v in adversary.discriminator.heads.state_dict().items())


def test_gdd_export_samples_and_scores_without_architecture_flags(tmp_path, monkeypatch):
    from evaluations import evaluator
    from evaluations.inception import random_inception

    teacher = tiny_export(tmp_path / "teacher.pt")
    data = tiny_dataset(tmp_path / "data")
    run = tmp_path / "gdd"
    try:
        entry("gdd").main(["--init_from", teacher, "--data_dir", data, "--run_dir", str(run), "--freeze", "convs",
                           *GDD_FLAGS])
    finally:
        logger.configure(None)
    export = str(run / "exports" / "generator_ema0.999.pt")
    side = checkpoint.read_sidecar(export)
    assert side["output"] == "denoised" and side["teacher_sha256"]
    g = load_generator(export)
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([0, 2])
    torch.testing.assert_close(g(z, y), Denoiser(g.backbone)(z, 80.0, y))
    out = tmp_path / "samples"
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "sample.py"), "--model", export, "--out_dir",
                    str(out), "--num_samples", "10", "--chunk_size", "5"], check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    path = str(out / "samples_10x8x8x3.npz")
    with np.load(path) as npz:
        assert npz["arr_0"].shape == (10, 8, 8, 3) and set(npz["arr_1"].tolist()) <= {0, 1, 2, 3}
    monkeypatch.setattr(evaluator, "load_inception", lambda *a, **k: random_inception(input_size=75))
    metrics = evaluator.evaluate(path, path)
    assert metrics["num_sample_images"] == 10 and abs(metrics["fid"]) < 1e-3


def test_a_sidecar_with_an_unknown_output_is_refused_naming_the_file(tmp_path):
    path = tiny_export(tmp_path / "g.pt", kind="generator")
    side = checkpoint.read_sidecar(path)
    side.pop(checkpoint.CONTENT_HASH)  # a sidecar from before the hash: read as it is
    with pytest.raises(ValueError, match=r"g.json: entry 'output' must be one of raw, denoised .* got 'x0'"):
        checkpoint.export_network(torch.load(path, weights_only=True), dict(side, output="x0"), path)
    with open(checkpoint.sidecar_path(path), "w") as f:
        json.dump(dict(side, output="x0"), f)
    with pytest.raises(ValueError, match=r"g.json: entry 'output' must be one of raw, denoised .* got 'x0'"):
        load_generator(path)
