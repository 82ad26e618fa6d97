"""Classifier-free guidance across the pipeline: the null class of a guided teacher travels into the generators
distilled from it (and is never sampled), and the guidance scale is an input only of a guidance-conditioned
generator G(z, y, w)."""

import copy
import json

import numpy as np
import pytest
import torch

from pagoda import logger
from pagoda.generator import Generator
from pagoda.model_io import load_generator
from pagoda.random_util import StackedRandomGenerator
from pagoda.sample_util import GeneratorSampler, sampler_classes, sampler_for_export
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY, tiny_export
from tests.helpers.tiny_runs import encode_run, stage2_run, teacher_run, tiny_dataset

import sample


def _randomised(net, seed=0):
    torch.manual_seed(seed)
    for p in net.parameters():  # zero-initialised output layers would make the network trivial
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def guided_stage2(tmp_path_factory):
    """A tiny teacher trained with label dropout (4 classes + null class 4), its latents and a stage-2 export."""
    root = tmp_path_factory.mktemp("guided")
    data = tiny_dataset(root / "data")
    teacher = teacher_run(root / "teacher", data, "--label_dropout", "0.5")
    latents = encode_run(root / "latents", teacher, data)
    return dict(root=root, data=data, teacher=teacher, latents=latents,
                generator=stage2_run(root / "stage2", teacher, latents))


def test_a_generator_of_a_guided_teacher_records_its_null_class_and_never_samples_it(guided_stage2):
    with open(guided_stage2["generator"].replace(".pt", ".json")) as f:
        side = json.load(f)
    assert side["null_class"] == 4 and side["num_classes"] == 5
    sampler = sampler_for_export(guided_stage2["generator"])
    assert sampler_classes(sampler) == 4
    for mode in ("balanced", "uniform"):
        out = guided_stage2["root"] / f"samples_{mode}"
        try:
            sample.main(["--model", guided_stage2["generator"], "--num_samples", "40", "--labels", mode,
                         "--out_dir", str(out), "--chunk_size", "20", "--batch_size", "20"])
        finally:  # later tests must not log into this folder
            logger.configure(None)
        labels = np.load(out / "samples_40x8x8x3.npz")["arr_1"]
        assert labels.max() == 3 and labels.min() == 0, mode


def test_an_unguided_generator_sidecar_has_no_null_class_entry(tmp_path):
    path = tiny_export(tmp_path / "g.pt", kind="generator")
    with open(str(tmp_path / "g.json")) as f:
        assert "null_class" not in json.load(f)
    assert load_generator(path).null_class is None


def test_guidance_on_a_generator_without_a_w_input_is_an_error(tmp_path):
    path = tiny_export(tmp_path / "g.pt", kind="generator")
    with pytest.raises(ValueError, match=r"^guidance_scale 3 needs a guidance-conditioned generator G\(z, y, w\) "
                                         r"\(train.py --method guidance\); this generator has no w input"):
        sampler_for_export(path, guidance_scale=3.0)
    assert sampler_for_export(path, guidance_scale=1.0).guidance_input is False


def test_a_zeroed_w_embedding_equals_the_network_without_it():
    plain = _randomised(UNetModel(**TINY))
    guided = UNetModel(**TINY, guidance_embed=True)
    missing, unexpected = guided.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["guidance_embed.0.bias", "guidance_embed.0.weight", "guidance_embed.2.bias",
                               "guidance_embed.2.weight"] and not unexpected
    assert not guided.guidance_embed[-1].weight.any() and not guided.guidance_embed[-1].bias.any()
    x, sigma, y = torch.randn(3, 3, 8, 8), torch.tensor([0.5, 3.0, 80.0]), torch.tensor([0, 1, 3])
    w = torch.tensor([1.0, 2.5, 4.0])
    assert torch.equal(guided(x, sigma, y, w), plain(x, sigma, y))
    # trained away from zero, w changes the output, and w = 1 is what w=None means
    torch.nn.init.normal_(guided.guidance_embed[-1].weight, 0, 0.5)
    assert not torch.allclose(guided(x, sigma, y, w), plain(x, sigma, y))
    assert torch.equal(guided(x, sigma, y, torch.ones(3)), guided(x, sigma, y))


def test_the_w_input_is_recorded_only_when_present_and_refused_by_a_network_without_it():
    assert "guidance_embed" not in UNetModel(**TINY).config
    assert UNetModel(**TINY, guidance_embed=True).config["guidance_embed"] is True
    with pytest.raises(ValueError, match=r"^this network has no guidance-scale input \(guidance_embed=False\)"):
        UNetModel(**TINY)(torch.zeros(1, 3, 8, 8), torch.ones(1), torch.zeros(1, dtype=torch.long), torch.ones(1))


def test_an_export_without_a_w_input_loads_strictly_and_samples_as_before(tmp_path):
    path = tiny_export(tmp_path / "g.pt", kind="generator")
    gen = load_generator(path)
    assert "guidance_embed" not in gen.backbone.config and gen.backbone.guidance_embed is None
    rng, y = StackedRandomGenerator("cpu", [0, 1, 2]), torch.tensor([0, 1, 2])
    z = rng.randn((3, 3, 8, 8)) * 80.0
    expected = Generator(gen.backbone).sample(z, y)  # G(z, y) as it was computed before w existed
    got = GeneratorSampler(gen)(StackedRandomGenerator("cpu", [0, 1, 2]), y)
    assert torch.equal(got, expected)


def _decode(out_dir, teacher, *extra):
    """encode.py --direction decode: 10 guided pairs in chunks of 4, 3 Heun steps."""
    from tests.helpers.tiny_runs import _main  # noqa: PLC0415 (the in-process runner that resets the logger)
    from tests.helpers.tiny_runs import encode  # noqa: PLC0415
    _main(encode, ["--teacher", teacher, "--direction", "decode", "--num_pairs", "10", "--out_dir", str(out_dir),
                   "--num_steps", "3", "--chunk_size", "4", "--batch_size", "3", "--storage", "fp32", *extra])
    return str(out_dir)


def test_guided_pairs_are_deterministic_rank_independent_and_resumable(guided_stage2, tmp_path, monkeypatch):
    from pagoda import dist_util  # noqa: PLC0415
    from pagoda.guided_pairs import guided_decode, load_guided_pairs, pair_inputs  # noqa: PLC0415
    from pagoda.model_io import load_teacher  # noqa: PLC0415
    teacher = guided_stage2["teacher"]
    whole = load_guided_pairs(_decode(tmp_path / "one", teacher))
    assert whole["w"].tolist() == [1.5, 2.0, 3.0, 4.0] * 2 + [1.5, 2.0]
    assert whole["y"].max() <= 3  # the null class is never a pair's label
    # two "ranks" (shards 1 and 0 of 2; rank 0 finishes the folder) write the same folder: identical pairs
    for rank in (1, 0):
        monkeypatch.setattr(dist_util, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(dist_util, "get_world_size", lambda: 2)
        _decode(tmp_path / "two", teacher)
    monkeypatch.undo()
    # a rerun finds every chunk done and changes nothing
    _decode(tmp_path / "two", teacher)
    split = load_guided_pairs(str(tmp_path / "two"))
    for k in ("z", "x", "y", "w"):
        assert torch.equal(whole[k], split[k]), k
    # pair 5 made alone is row 5: a pure function of (seed, 5)
    z, y, w = pair_inputs([5], shape=(3, 8, 8), seed=0, sigma_max=80.0, num_classes=4,
                          guidance_scales=[1.5, 2.0, 3.0, 4.0])
    from pagoda.sampling import karras_sigmas  # noqa: PLC0415
    x = guided_decode(load_teacher(teacher), z, y, w, karras_sigmas(3, 0.002, 80.0, 7.0))
    assert torch.equal(z, whole["z"][5:6]) and torch.allclose(x, whole["x"][5:6], atol=1e-5)


def test_guided_pairs_from_a_teacher_without_a_null_class_are_refused(tmp_path):
    teacher = tiny_export(tmp_path / "t.pt")
    with pytest.raises(ValueError, match=r"^--guidance_scales 1.5,2.0,3.0,4.0 needs a teacher trained with label "
                                         r"dropout \(a null class\); .* has none, so it can only decode at w = 1"):
        _decode(tmp_path / "pairs", teacher)


def test_guidance_distillation_makes_a_w_conditioned_generator_that_stage3_keeps(guided_stage2, tmp_path):
    from tests.helpers.tiny_runs import _main, entry  # noqa: PLC0415
    pairs = _decode(tmp_path / "pairs", guided_stage2["teacher"])
    path = _distill(tmp_path / "guidance", guided_stage2["generator"], pairs)
    gen = load_generator(path)
    assert gen.backbone.config["guidance_embed"] is True and gen.null_class == 4
    assert gen.backbone.guidance_embed[-1].weight.any()  # the distillation term reached the w-embedding
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([0, 1])
    assert not torch.equal(gen.sample(z, y, torch.full((2,), 4.0)), gen.sample(z, y, torch.ones(2)))
    from compare import Row, row_nfe  # noqa: PLC0415
    assert row_nfe(GeneratorSampler(gen, guidance_scale=3.0), Row(label="g", path=path, guidance_scale=3.0)) == 1
    _main(entry("pagoda"), ["--init_from", path, "--latent_dir", guided_stage2["latents"], "--run_dir",
                            str(tmp_path / "s3"), "--grow_factor", "2", "--image_size", "16", "--feature_networks",
                            "tiny", "--d_channel_scale", "0.25", "--global_batch_size", "4", "--total_steps", "1",
                            "--save_interval", "1", "--preview_interval", "0"])
    grown = load_generator(str(tmp_path / "s3" / "exports" / "generator_ema0.999.pt"))
    assert grown.backbone.config["guidance_embed"] is True and grown.output_size == 16 and grown.null_class == 4


def test_guidance_from_the_released_imagenet_teacher_is_refused_before_sampling(compat_dir, monkeypatch):
    """The released EDM ImageNet-64 teacher (a bare state dict of the compat layout, loaded here on the meta device)
    has no null class: asking it for guidance is an error when the sampler is built, not an unguided run."""
    from pagoda import checkpoint, model_io
    from pagoda.sample_util import TeacherSampler
    from pagoda.unet import imagenet64_config
    with torch.device("meta"):
        released = UNetModel(**imagenet64_config()).state_dict()
    layout = [l.split(" ", 1)[0] for l in (compat_dir / "adm_imagenet64_out64_keys.txt").read_text().splitlines()
              if l and not l.startswith("#")]
    assert sorted(released) == sorted(layout)
    monkeypatch.setattr(checkpoint, "load_export", lambda path, expect_kind: (released, None))
    monkeypatch.setattr(checkpoint, "weights_digest", lambda state_dict: "released")
    monkeypatch.setattr(model_io.os.path, "exists", lambda path: True)
    with torch.device("meta"):
        teacher = model_io.load_teacher("edm_imagenet64_ema.pt", device="meta")
    assert teacher.null_class is None and TeacherSampler(teacher, guidance_scale=1.0).guidance_scale == 1.0
    with pytest.raises(ValueError, match=r"guidance_scale 3 needs a teacher trained with label dropout \(a null "
                                         r"class\); this teacher has none \(the released EDM ImageNet-64 teacher "
                                         r"neither\), so it samples only w = 1"):
        TeacherSampler(teacher, guidance_scale=3.0)


def _distill(run_dir, generator, pairs, *extra):
    """train.py --method guidance: 40 steps of 4 pairs on the tiny run; returns the EMA export's path."""
    from tests.helpers.tiny_runs import _main, entry  # noqa: PLC0415
    _main(entry("guidance"), ["--init_from", generator, "--guided_pairs", pairs, "--run_dir", str(run_dir),
                              "--global_batch_size", "4", "--total_steps", "40", "--lr", "2e-3", "--ema_rates", "0.9",
                              "--save_interval", "40", "--preview_interval", "0", "--log_interval", "40", *extra])
    return str(run_dir / "exports" / "generator_ema0.9.pt")


def _pair_psnr(gen, pairs):
    from pagoda.image_util import psnr  # noqa: PLC0415
    return psnr(gen.sample(pairs["z"], pairs["y"], pairs["w"]), pairs["x"]).mean().item()


def _w1_gap(gen, start):
    """Mean squared difference from the starting generator at w = 1 on 32 fresh prior latents of real classes."""
    z = StackedRandomGenerator("cpu", list(range(100, 132))).randn((32, 3, 8, 8)) * 80.0
    y = torch.arange(32) % 4
    return (gen.sample(z, y, torch.ones(32)) - start.sample(z, y)).square().mean().item()


def test_guidance_distillation_fits_the_pairs_and_the_anchor_holds_w_1(guided_stage2, tmp_path):
    from pagoda.guided_pairs import load_guided_pairs  # noqa: PLC0415
    pairs_dir = _decode(tmp_path / "pairs", guided_stage2["teacher"])
    pairs = load_guided_pairs(pairs_dir)
    start = load_generator(guided_stage2["generator"])  # stage 2's, without a w input
    anchored = load_generator(_distill(tmp_path / "anchored", guided_stage2["generator"], pairs_dir))
    free = load_generator(_distill(tmp_path / "free", guided_stage2["generator"], pairs_dir, "--anchor_weight", "0"))
    with open(str(tmp_path / "anchored" / "exports" / "generator_ema0.9.json")) as f:
        side = json.load(f)
    with open(guided_stage2["generator"].replace(".pt", ".json")) as f:
        start_side = json.load(f)
    assert side["unet"]["guidance_embed"] is True and side["null_class"] == 4
    assert side["teacher_sha256"] == start_side["teacher_sha256"]
    # the pairs are learnt (measured 7.1 -> 12.0 dB on this tiny run; 29.1 dB unanchored) ...
    before = _pair_psnr(start, {**pairs, "w": None})
    assert _pair_psnr(anchored, pairs) > before + 3.0
    # ... and the anchor keeps w = 1 where it started: measured 0.0015 against 0.41 without it
    assert _w1_gap(anchored, start) * 20 < _w1_gap(free, start)


def test_guidance_objective_starts_at_zero_anchor_loss_and_draws_only_real_classes():
    from pagoda.generator import with_guidance_input  # noqa: PLC0415
    from pagoda.losses import PixelLoss  # noqa: PLC0415
    from pagoda.methods.guidance import GuidanceObjective  # noqa: PLC0415
    start = _randomised(UNetModel(**dict(TINY, num_classes=5)))
    net = with_guidance_input(start)
    objective = GuidanceObjective(generator=net, anchor=copy.deepcopy(net), reconstruction=PixelLoss(),
                                  anchor_weight=1.0, num_classes=4, sigma_max=80.0, sigma_data=0.5, ema_rates=(0.99,),
                                  sidecar={}, censor_clamped=True, histogram_weight=0.0)
    batch = {"z": torch.randn(64, 3, 8, 8) * 80, "x": torch.rand(64, 3, 8, 8) * 2 - 1, "y": torch.arange(64) % 4,
             "w": torch.full((64,), 3.0)}
    gen = torch.Generator().manual_seed(0)
    terms = objective.losses("generator", {"generator": net}, batch, step=0, generator=gen)
    assert torch.equal(terms["anchor"], torch.zeros(64))  # zero w-embedding: G(., ., 1) is G_0
    from pagoda.generator import generate  # noqa: PLC0415
    expected = PixelLoss()(generate(start, batch["z"], batch["y"]), batch["x"])  # unclamped, as trained
    assert torch.allclose(terms["distill"], expected, atol=1e-6)
    assert torch.allclose(terms["loss"], terms["distill"])
    _, y, w = objective.anchor_inputs(2000, torch.zeros(2000, 3, 8, 8), torch.Generator().manual_seed(1))
    assert set(y.tolist()) == {0, 1, 2, 3} and torch.equal(w, torch.ones(2000))  # never the null class 4


def test_guided_pair_shards_are_disjoint_and_cover_every_pair():
    from pagoda.guided_pairs import GuidedPairDataset  # noqa: PLC0415
    pairs = {"z": torch.arange(7.0)[:, None], "x": -torch.arange(7.0)[:, None], "w": torch.arange(7.0) + 1,
             "y": None}
    shards = [GuidedPairDataset(pairs, shard=r, num_shards=3) for r in range(3)]
    seen = sorted(int(s.load(i)["z"]) for s in shards for i in range(len(s)))
    assert seen == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]
    item = shards[1].load(1)
    assert set(item) == {"z", "x", "w"} and item["x"].item() == -4.0 and item["w"].item() == 5.0


def test_guidance_distillation_refuses_bad_starts(guided_stage2, tmp_path):
    from pagoda.methods import guidance  # noqa: PLC0415
    from tests.helpers.tiny_runs import _main, entry  # noqa: PLC0415
    with pytest.raises(ValueError, match=r"^--guided_pairs is required"):
        _main(entry("guidance"), ["--init_from", guided_stage2["generator"], "--run_dir", str(tmp_path / "r")])
    with pytest.raises(ValueError, match=r"^--init_from is required: a one-step generator export"):
        guidance.load_start("", device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"is a 'denoiser' export, but a 'generator' is needed here"):
        guidance.load_start(guided_stage2["teacher"], device="cpu", seed=0)
    from pagoda import checkpoint  # noqa: PLC0415
    from pagoda.generator import generator_sidecar  # noqa: PLC0415
    gdd = str(tmp_path / "gdd.pt")
    net = UNetModel(**TINY)
    checkpoint.export_network(net.state_dict(), generator_sidecar(net, output="denoised"), gdd)
    with pytest.raises(ValueError, match=r"is a 'denoised' generator \(GDD\); guidance distillation trains PaGoDA's"):
        guidance.load_start(gdd, device="cpu", seed=0)


def test_censored_regression_forgives_only_overshoot_past_a_clamped_target():
    from pagoda.methods.guidance import censored  # noqa: PLC0415
    x = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.3, 0.3, 0.9995])
    x_hat = torch.tensor([1.4, 0.8, -1.7, -0.6, 1.4, -1.4, 1.2], requires_grad=True)
    got = censored(x_hat, x)
    # past a bound the target sits on: no error, no gradient; short of it, and anywhere inside: unchanged
    assert got.tolist() == pytest.approx([1.0, 0.8, -1.0, -0.6, 1.4, -1.4, 1.0])
    got.sum().backward()
    assert x_hat.grad.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_the_histogram_term_sees_only_the_value_distribution_and_asks_for_the_pairs_contrast():
    from pagoda.losses import PixelLoss  # noqa: PLC0415
    from pagoda.methods.guidance import GuidanceObjective, sorted_pixels  # noqa: PLC0415
    objective = GuidanceObjective(generator=None, anchor=None, reconstruction=PixelLoss(), anchor_weight=1.0,
                                  num_classes=None, sigma_max=80.0, sigma_data=0.5, ema_rates=(), sidecar={},
                                  censor_clamped=True, histogram_weight=1.0)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[:, :, :2] = 1.0  # saturated rows, as the teacher's clamped samples have
    shuffled = x.flatten(2)[:, :, torch.randperm(64)].view_as(x)
    # any rearrangement of a pair's pixels within a channel has its histogram: no term, whatever the regression says
    assert torch.equal(objective.histogram_term(shuffled, x), torch.zeros(4))
    assert (PixelLoss()(shuffled, x) > 0.1).all()
    # channels are sorted apart: swapping two channels' values is not a rearrangement within one
    assert (objective.histogram_term(x.flip(1), x) > 0).all()
    # a contrast-shrunk output (the regression's failure) is penalised, and never more than by the regression
    shrunk = (0.6 * x).requires_grad_(True)
    term = objective.histogram_term(shrunk, x)
    assert (term > 0).all() and (term <= PixelLoss()(shrunk, x) + 1e-6).all()
    # its gradient pushes every pixel outwards (towards its sorted partner); overshoot past a saturated value is free
    term.sum().backward()
    assert (shrunk.grad * x <= 0).all()
    over = x.clone()
    over[:, :, :2] = 1.7
    assert torch.equal(objective.histogram_term(over, x), torch.zeros(4))
    assert torch.equal(sorted_pixels(x)[:, :, -2:], torch.ones(4, 3, 2, 8))
