"""The guided GAN: a guidance-conditioned discriminator D(x, y, w) whose reals are the data at w = 1 and the
guided teacher's samples (the guided pairs' x_w) at w > 1, against G(z, y, w) at the matching (y, w)."""

import pytest
import torch

from pagoda import script_util
from pagoda.diffaug import DiffAugment
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import create_feature_network
from pagoda.generator import with_guidance_input
from pagoda.losses import PixelLoss
from pagoda.methods.pagoda import PaGoDAObjective
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY

NUM_CLASSES = 5


def _discriminator(guidance_embed, seed=0):
    torch.manual_seed(seed)
    net = create_feature_network("tiny", seed=1)
    return ProjectedDiscriminator(feature_networks={"tiny": net}, image_size=8, num_classes=NUM_CLASSES,
                                  channel_scale=0.25, norm="group", guidance_embed=guidance_embed).eval()


def test_a_zeroed_w_embedding_leaves_the_discriminator_unchanged():
    plain, guided = _discriminator(False), _discriminator(True)
    extra = sorted(set(guided.state_dict()) - set(plain.state_dict()))
    assert extra and all(".guidance_embed." in k for k in extra)
    # the same seed draws the same heads: the w-embeddings are made after them
    for k, v in plain.state_dict().items():
        assert torch.equal(v, guided.state_dict()[k]), k
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 2, 4])
    w = torch.tensor([1.0, 2.5, 4.0])
    for got, want in zip(guided(x, y, w=w), plain(x, y)):
        assert torch.equal(got, want)
    # trained away from zero, w changes the logits, and w = None means w = 1
    for heads in guided.heads.values():
        for head in heads:
            torch.nn.init.normal_(head.guidance_embed[-1].weight, 0, 0.5)
    assert any(not torch.allclose(a, b) for a, b in zip(guided(x, y, w=w), plain(x, y)))
    for a, b in zip(guided(x, y, w=torch.ones(3)), guided(x, y)):
        assert torch.equal(a, b)


def test_w_is_refused_by_a_discriminator_without_it_and_needs_classes():
    with pytest.raises(ValueError, match=r"^this discriminator has no guidance-scale input \(guidance_embed=False\)"):
        _discriminator(False)(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), w=torch.ones(1))
    with pytest.raises(ValueError, match=r"^w must have shape \(2,\) to match the batch; got \(3,\)"):
        _discriminator(True)(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), w=torch.ones(3))
    with pytest.raises(ValueError, match=r"^a guidance-conditioned discriminator needs classes \(num_classes\)"):
        ProjectedDiscriminator(feature_networks={"tiny": create_feature_network("tiny", seed=1)}, image_size=8,
                               guidance_embed=True)


def _guided_pairs(n=6):
    """Pairs whose image i is the constant i / 10, so a batch row tells which pair it is."""
    x = (torch.arange(n, dtype=torch.float32) / 10)[:, None, None, None].expand(n, 3, 8, 8).clone()
    return {"z": torch.randn(n, 3, 8, 8) * 80, "x": x, "y": torch.arange(n) % 4,
            "w": torch.tensor([1.5, 2.0, 3.0, 4.0, 1.5, 2.0][:n])}


def _objective(guided_gan, guided="pairs"):
    torch.manual_seed(0)
    generator = with_guidance_input(UNetModel(**dict(TINY, num_classes=NUM_CLASSES)))
    return PaGoDAObjective(generator=generator, discriminator=_discriminator(guided_gan).train(),
                           reconstruction=PixelLoss(), augment=DiffAugment(policy=()),
                           guided=_guided_pairs() if guided == "pairs" else guided, guided_gan=guided_gan)


def _batch(n=4):
    return {"x": torch.full((n, 3, 8, 8), -0.5), "z": torch.randn(n, 3, 8, 8) * 80, "y": torch.arange(n)}


def _recorded(objective, method):
    calls = []
    real = getattr(objective.adversary, method)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    setattr(objective.adversary, method, record)
    return calls


def test_the_discriminator_phase_reals_are_the_data_at_w_1_and_the_guided_samples_at_their_w():
    objective, batch, pairs = _objective(True), _batch(), _guided_pairs()
    calls = _recorded(objective, "discriminator_terms")
    nets = {"discriminator": objective.players["discriminator"]}
    objective.losses("discriminator", nets, batch, step=1, generator=torch.Generator().manual_seed(0))
    (_, x_real, x_fake, y), kwargs = calls[0]
    w = kwargs["w"]
    assert x_real.shape == x_fake.shape == (8, 3, 8, 8) and w.shape == y.shape == (8,)
    assert torch.equal(x_real[:4], batch["x"]) and torch.equal(y[:4], batch["y"]) and torch.equal(w[:4], torch.ones(4))
    idx = (x_real[4:, 0, 0, 0] * 10).round().long()  # which pair each guided real is
    assert torch.equal(x_real[4:], pairs["x"][idx])
    assert torch.equal(w[4:], pairs["w"][idx]) and torch.equal(y[4:], pairs["y"][idx]) and (w[4:] > 1).all()
    # option (a): the data only, and no w for a discriminator without a w input
    objective = _objective(False)
    calls = _recorded(objective, "discriminator_terms")
    objective.losses("discriminator", {"discriminator": objective.players["discriminator"]}, batch, step=1,
                     generator=torch.Generator().manual_seed(0))
    (_, x_real, _, y), kwargs = calls[0]
    assert torch.equal(x_real, batch["x"]) and kwargs["w"] is None


def test_the_generator_gan_term_sees_fakes_at_w_1_and_at_the_pairs_w():
    objective, batch, pairs = _objective(True), _batch(), _guided_pairs()
    calls = _recorded(objective, "generator_term")
    nets = {"generator": objective.generator}
    terms = objective.losses("generator", nets, batch, step=0, generator=torch.Generator().manual_seed(0))
    (x_fake, y), kwargs = calls[0]
    w = kwargs["w"]
    assert x_fake.shape == (8, 3, 8, 8) and terms["gan"].shape == (4,)  # row i: the mean of the two halves' row i
    assert torch.equal(w[:4], torch.ones(4)) and torch.equal(y[:4], batch["y"])
    # the GAN's guided half is at a draw of the pairs' (y, w): every (y, w) it gets is one of a pair
    assert set(zip(y[4:].tolist(), w[4:].tolist())) <= set(zip(pairs["y"].tolist(), pairs["w"].tolist()))
    assert (w[4:] > 1).all() and "distill" in terms


def test_guided_gan_without_guided_pairs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"^guided_gan needs guided pairs: the guided teacher's samples are its "
                                         r"reals at w > 1"):
        _objective(True, guided=None)
    from pagoda.methods import pagoda  # noqa: PLC0415
    config = {k: v for group in pagoda.GROUPS.values() for k, v in script_util.defaults(group).items()}
    config.update(guided_gan=True, init_from="teacher.pt")  # refused before anything is loaded
    with pytest.raises(ValueError, match=r"^--guided_gan true needs --guided_pairs: the guided teacher's samples are "
                                         r"the discriminator's reals at w > 1"):
        pagoda.build(config, torch.device("cpu"))


def test_stage2_with_the_guided_gan_exports_a_generator_that_samples_at_every_w_and_stage3_keeps(tmp_path):
    from pagoda.model_io import load_generator  # noqa: PLC0415
    from tests.helpers.tiny_runs import _main, encode_run, entry, stage2_run, teacher_run, tiny_dataset  # noqa: PLC0415
    from tests.test_guidance import _decode  # noqa: PLC0415
    data = tiny_dataset(tmp_path / "data")
    teacher = teacher_run(tmp_path / "teacher", data, "--label_dropout", "0.5")
    latents = encode_run(tmp_path / "latents", teacher, data)
    pairs = _decode(tmp_path / "pairs", teacher)
    path = stage2_run(tmp_path / "s2", teacher, latents, "--guided_pairs", pairs, "--guided_gan", "true")
    state = torch.load(str(tmp_path / "s2" / "checkpoints" / "state_0000002.pt"), map_location="cpu")
    d_state = state["players"]["discriminator"]["model"]
    moved = [k for k, v in d_state.items() if ".guidance_embed.2.weight" in k and v.any()]
    assert moved  # the discriminator's w-embedding trained away from zero
    gen = load_generator(path)
    assert gen.backbone.config["guidance_embed"] is True and gen.null_class == 4
    z, y = torch.randn(2, 3, 8, 8) * 80, torch.tensor([0, 1])
    samples = [gen.sample(z, y, torch.full((2,), w)) for w in (1.0, 2.0, 4.0)]
    assert all(torch.isfinite(s).all() for s in samples)
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])
    _main(entry("pagoda"), ["--init_from", path, "--latent_dir", latents, "--run_dir", str(tmp_path / "s3"),
                            "--grow_factor", "2", "--image_size", "16", "--feature_networks", "tiny",
                            "--d_channel_scale", "0.25", "--global_batch_size", "4", "--total_steps", "1",
                            "--save_interval", "1", "--preview_interval", "0"])
    grown = load_generator(str(tmp_path / "s3" / "exports" / "generator_ema0.999.pt"))
    assert grown.backbone.config["guidance_embed"] is True and grown.output_size == 16
    assert not torch.equal(grown.sample(z, y, torch.full((2,), 4.0)), grown.sample(z, y, torch.ones(2)))
