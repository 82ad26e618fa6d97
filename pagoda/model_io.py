"""Build networks from export files: our exports (state_dict + JSON sidecar) and the released checkpoints.

Released files (the EDM ImageNet-64 teacher `edm_imagenet64_ema.pt`, PaGoDA generators) have no sidecar; their
architecture is recognised from the state-dict layout, which the compat fixtures pin down.
"""

import os

import torch

from . import checkpoint, remote
from .dimr import DiMR
from .generator import Generator
from .precond import Denoiser
from .unet import UNetModel, imagenet64_config

HINTS = {"generator": " A pagoda generator export is `<run_dir>/exports/generator_ema<rate>.pt`.",
         "encoder": " An amortised encoder export is `<run_dir>/exports/encoder_ema<rate>.pt`, trained by "
                    "commands/encoder_mnist.sh (scripts/train.py --method encoder)."}
ARCHITECTURES = {"unet": UNetModel, "dimr": DiMR}  # sidecar entry -> the network it configures
RELEASED = {f"imagenet64_out{s}": (lambda s=s: imagenet64_config(output_size=s)) for s in (64, 128, 256)}


def _layout(state_dict):
    return [(k, tuple(v.shape)) for k, v in state_dict.items()]


def infer_released_config(state_dict, *, source):
    """The constructor config of a released checkpoint, recognised by its exact key/shape layout."""
    want = sorted(_layout(state_dict))
    for name, make in RELEASED.items():
        cfg = make()
        with torch.device("meta"):
            candidate = UNetModel(**cfg)
        if sorted(_layout(candidate.state_dict())) == want:
            return cfg
    raise ValueError(f"{source} has no architecture sidecar ({checkpoint.sidecar_path(source)}) and its state dict "
                     f"matches none of the released layouts {sorted(RELEASED)}; export it with pagoda or write "
                     f"the sidecar")


def load_backbone(path, *, expect_kind):
    """(backbone UNetModel, sidecar) from an export or a released file; strict load. The backbone's
    `content_sha256` identifies the file's model: the sidecar's content hash, or for a released file without a
    sidecar the digest of its weights."""
    if not os.path.exists(path):
        hint = (f" The released EDM ImageNet-64 teacher can be given by its URL, {remote.TEACHER_URL}; a pagoda "
                "teacher export is `<run_dir>/exports/denoiser_ema<rate>.pt`."
                if expect_kind == "denoiser" else HINTS.get(expect_kind, ""))
        raise FileNotFoundError(f"{expect_kind} checkpoint not found: {path}.{hint}")
    state_dict, sidecar = checkpoint.load_export(path, expect_kind=expect_kind)
    if isinstance(state_dict, dict) and "players" in state_dict:
        raise ValueError(f"{path} is a training state, not an export; use the files in <run_dir>/exports/")
    if sidecar is None:
        sidecar = {"kind": expect_kind, "unet": infer_released_config(state_dict, source=path)}
    backbone = build_network(sidecar)
    checkpoint.load_state_dict_strict(backbone, state_dict, source=path)
    backbone.content_sha256 = sidecar.get(checkpoint.CONTENT_HASH) or checkpoint.weights_digest(state_dict)
    return backbone, sidecar


def build_network(sidecar):
    """The backbone a (validated) sidecar configures: the UNet under "unet", DiMR under "dimr"."""
    key = next(k for k in ARCHITECTURES if k in sidecar)
    return ARCHITECTURES[key](**sidecar[key])


def real_classes(num_classes, null_class):
    """The classes a network's labels may name: its embedding rows less a guided teacher's null class (None for an
    unconditional network)."""
    return num_classes - 1 if (num_classes and null_class is not None) else num_classes


def load_teacher(path, *, device="cpu"):
    """A frozen EDM denoiser D(x, sigma, y) in eval mode. `.sigmas` is the grid a distilled k-step denoiser samples
    on (its sidecar's, k + 1 values ending in 0), None for a teacher sampled on any grid."""
    backbone, side = load_backbone(path, expect_kind="denoiser")
    denoiser = Denoiser(backbone, sigma_data=side.get("sigma_data", 0.5), sigma_min=side.get("sigma_min", 0.002),
                        sigma_max=side.get("sigma_max", 80.0))
    denoiser.null_class = side.get("null_class")
    denoiser.sigmas = side.get("sigmas")
    return denoiser.requires_grad_(False).eval().to(device)


def load_generator(path, *, device="cpu"):
    """A one-step generator (stage 2, or grown by stage 3) in eval mode."""
    backbone, side = load_backbone(path, expect_kind="generator")
    gen = Generator(backbone, sigma_max=side.get("sigma_max", 80.0), sigma_data=side.get("sigma_data", 0.5),
                    output=side.get("output", "raw"), null_class=side.get("null_class"))
    gen.teacher_sha256 = side.get("teacher_sha256")  # its lineage: the teacher whose latents it takes
    return gen.eval().to(device)


def load_generator_or_teacher_backbone(path):
    """For initialising stage 2 (from a teacher) or stage 3 (from a generator): (backbone, sidecar)."""
    side = checkpoint.read_sidecar(path) if os.path.exists(path) else None
    kind = side.get("kind") if side else "denoiser"
    return load_backbone(path, expect_kind=kind)


def load_encoder(path, *, device="cpu"):
    """The amortised encoder E(x, y) -> z (pagoda.amortised_encoder) in eval mode; `.sidecar` keeps what it
    inverts (teacher hash, latent settings) for the applications' compatibility check."""
    from .amortised_encoder import AmortisedEncoder
    if os.path.exists(path) and checkpoint.read_sidecar(path) is None:
        raise ValueError(f"{path} has no sidecar ({checkpoint.sidecar_path(path)}): an amortised encoder is only "
                         "usable with the sidecar its export wrote (what teacher and latents it inverts)")
    backbone, side = load_backbone(path, expect_kind="encoder")
    encoder = AmortisedEncoder(backbone, encoder_sigma=side["encoder_sigma"], input_sigma=side["input_sigma"],
                               sigma_max=side["sigma_max"], sigma_data=side["sigma_data"],
                               null_class=side.get("null_class"))
    encoder.sidecar = side
    return encoder.requires_grad_(False).eval().to(device)
