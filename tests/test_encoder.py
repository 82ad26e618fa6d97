"""The amortised encoder E(x, y) -> z (pagoda/amortised_encoder.py, pagoda/methods/encoder.py): its
parameterisation, a tiny training run through scripts/train.py --method encoder whose export loads strictly and
drives scripts/apply.py --encoder amortised, the loader's and the applications' refusals with their exact
messages. Its error against ODE latents of held-out digits is pinned in tests/test_applications.py (fixtures)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pagoda import applications as app
from pagoda import checkpoint
from pagoda.amortised_encoder import AmortisedEncoder, encoder_sidecar, regression_loss
from pagoda.methods.encoder import NoisedPairs
from pagoda.model_io import load_encoder, load_teacher
from pagoda.random_util import StackedRandomGenerator
from pagoda.sampling import heun_invert
from pagoda.unet import UNetModel
from tests.helpers.exports import TINY, tiny_export
from tests.helpers.methods import entry
from tests.helpers.tiny_runs import _main, encode_run, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(num_steps=3, start_sigma=0.0, sigma_min=0.002, sigma_max=80.0, rho=7.0, clamp_denoised=True)


def _encoder_export(path, **changes):
    net = UNetModel(**{**TINY, **changes})
    side = encoder_sidecar(net, encoder_sigma=0.002, input_sigma=0.0, sigma_max=80.0, sigma_data=0.5, teacher_sha256="ab" * 32,
                           null_class=None, latent_settings=SETTINGS)
    checkpoint.export_network(net.state_dict(), side, str(path))
    return str(path)


def test_encoder_is_sigma_max_times_the_backbone_at_its_fixed_sigma():
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    enc = AmortisedEncoder(net, encoder_sigma=0.3, sigma_max=80.0, sigma_data=0.5).eval()
    x, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([1, 3])
    z = enc.encode(x, y)
    assert z.shape == (2, 3, 8, 8)
    want = 80.0 * net(x / (0.3**2 + 0.25) ** 0.5, torch.full((2,), 0.3), y)
    torch.testing.assert_close(z, want)


def test_a_noised_input_encoder_draws_the_ode_encoders_noise():
    """With input_sigma, encode(x, seeds) sees x + input_sigma n with n drawn as applications.encode_ode draws it."""
    torch.manual_seed(0)
    net = UNetModel(**TINY)
    enc = AmortisedEncoder(net, encoder_sigma=0.1, input_sigma=0.1).eval()
    x, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([0, 2])
    n = StackedRandomGenerator("cpu", [5, 9]).randn(x.shape)
    torch.testing.assert_close(enc.encode(x, y, seeds=[5, 9]), enc(x + 0.1 * n, y))
    with pytest.raises(ValueError, match=r"^this encoder takes x \+ input_sigma n: pass one noise seed per image$"):
        enc.encode(x, y)


def test_training_pairs_carry_the_noise_their_latents_were_encoded_from(tmp_path):
    """NoisedPairs' n is the encoder's start noise: the teacher's ODE from x + start_sigma n gives the stored z."""
    data = tiny_dataset(tmp_path)
    teacher = tiny_export(tmp_path / "teacher.pt")
    latents = encode_run(tmp_path / "z", teacher, data, "--start_sigma", "0.5")
    pairs = NoisedPairs(latents, image_size=8)
    items = [pairs.load(i) for i in range(len(pairs))]
    x, n, z, y = (torch.stack([it[k] for it in items]) for k in ("x", "n", "z", "y"))
    sigmas = app.ode_sigmas(num_steps=3, start_sigma=0.5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    z_again = heun_invert(load_teacher(teacher), x + 0.5 * n, sigmas, y, clamp_denoised=True)
    assert app.latent_error(z_again, z).max() < 1e-4
    assert app.latent_error(heun_invert(load_teacher(teacher), x + 0.5 * n.roll(1, 0), sigmas, y), z).min() > 0.1


def test_regression_loss_is_mse_plus_l1_per_sample():
    pred, target = torch.zeros(2, 1, 2, 2), torch.tensor([[1.0, -1, 2, 0], [0, 0, 0, 0]]).reshape(2, 1, 2, 2)
    torch.testing.assert_close(regression_loss(pred, target), torch.tensor([6 / 4 + 4 / 4, 0.0]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher's latents of 12 images and 4 encoder updates on them, through the one training loop."""
    tmp = tmp_path_factory.mktemp("enc")
    data = tiny_dataset(tmp)
    teacher = tiny_export(tmp / "teacher.pt")
    latents = encode_run(tmp / "z", teacher, data)
    run = tmp / "run"
    _main(entry("encoder"), ["--init_from", teacher, "--latent_dir", latents, "--run_dir", str(run),
                             "--global_batch_size", "4", "--total_steps", "4", "--save_interval", "4",
                             "--log_interval", "2", "--ema_rates", "0.9", "--lr", "1e-3"])
    return {"teacher": teacher, "latents": latents, "data": data, "encoder": str(run / "exports/encoder_ema0.9.pt"),
            "tmp": tmp}


def test_trained_export_records_what_it_inverts_and_loads_strictly(trained):
    encoder, teacher = load_encoder(trained["encoder"]), load_teacher(trained["teacher"])
    side = json.load(open(checkpoint.sidecar_path(trained["encoder"])))
    assert (side["kind"], side["image_size"], side["num_classes"], side["sigma_max"], side["encoder_sigma"],
            side["input_sigma"]) == ("encoder", 8, 4, 80.0, 0.002, 0.0)
    assert side["teacher_sha256"] == teacher.backbone.content_sha256 and side["step"] == 4
    assert side["latent_settings"] == dict(SETTINGS, start_sigma=0.0)
    state = checkpoint.torch_load(trained["encoder"])
    assert all(torch.equal(v, state[k]) for k, v in encoder.backbone.state_dict().items())
    # trained: no longer the teacher's weights it started from
    assert any(not torch.equal(v, teacher.backbone.state_dict()[k]) for k, v in state.items())
    app.check_encoder(encoder, teacher, teacher_path="T", encoder_path="E")


def test_apply_super_resolves_with_the_amortised_encoder(trained, tmp_path):
    generator = tiny_export(tmp_path / "g.pt", kind="generator")
    common = [sys.executable, os.path.join(REPO, "scripts", "apply.py"), "--input", trained["data"], "--teacher",
              trained["teacher"], "--generator", generator, "--use_data_labels", "true", "--num_blocks", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(common + ["--out_dir", tmp_path / "a", "--encoder", "amortised", "--encoder_path",
                                   trained["encoder"]], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert f"encoder: amortised {trained['encoder']} (one call" in out.stdout + out.stderr
    scores = json.load(open(tmp_path / "a" / "scores.json"))
    assert scores["encoder"] == "amortised" and scores["num_images"] == 12
    missing = subprocess.run(common + ["--out_dir", tmp_path / "b", "--encoder", "amortised"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("error: --encoder amortised needs --encoder_path: an encoder export "
                                           "(<run_dir>/exports/encoder_ema<rate>.pt from commands/encoder_mnist.sh)")


def test_loader_refuses_a_missing_file_another_kind_and_a_file_without_sidecar(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_encoder("nowhere.pt")
    assert str(err.value) == ("encoder checkpoint not found: nowhere.pt. An amortised encoder export is "
                              "`<run_dir>/exports/encoder_ema<rate>.pt`, trained by commands/encoder_mnist.sh "
                              "(scripts/train.py --method encoder).")
    generator = tiny_export(tmp_path / "g.pt", kind="generator")
    with pytest.raises(ValueError, match=rf"^{generator} is a 'generator' export, but an 'encoder' is needed here$"):
        load_encoder(generator)
    bare = str(tmp_path / "bare.pt")
    shutil.copy(_encoder_export(tmp_path / "e.pt"), bare)
    with pytest.raises(ValueError, match=rf"^{bare} has no sidecar \({tmp_path / 'bare.json'}\): an amortised "
                                         r"encoder is only usable with the sidecar its export wrote"):
        load_encoder(bare)


def test_an_encoder_of_another_teacher_size_or_classes_is_refused(tmp_path):
    teacher = load_teacher(tiny_export(tmp_path / "t.pt"))
    fix = "; train the encoder on this teacher's latents (commands/encoder_mnist.sh)"
    cases = [(dict(image_size=16), "the encoder E takes 16 px images but the teacher T works at 8 px" + fix),
             (dict(num_classes=3), "the encoder E knows 3 classes but the teacher T knows 4" + fix),
             ({}, "the encoder E was trained on the latents of another teacher (content hash abababababab) than T "
                  f"({teacher.backbone.content_sha256[:12]})" + fix)]
    for k, (changes, message) in enumerate(cases):
        encoder = load_encoder(_encoder_export(tmp_path / f"e{k}.pt", **changes))
        with pytest.raises(ValueError) as err:
            app.check_encoder(encoder, teacher, teacher_path="T", encoder_path="E")
        assert str(err.value) == message


def test_encoder_training_refuses_latents_of_another_teacher(trained):
    other = tiny_export(trained["tmp"] / "other.pt", seed=1)
    with pytest.raises(ValueError, match=r"^the latents in .* were encoded by another teacher"):
        _main(entry("encoder"), ["--init_from", other, "--latent_dir", trained["latents"], "--run_dir",
                                 str(trained["tmp"] / "refused"), "--total_steps", "1"])
    assert not os.path.exists(trained["tmp"] / "refused" / "exports")
