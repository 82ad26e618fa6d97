"""How well the amortised encoder E(x, y) stands in for the teacher's PF-ODE on held-out images.

    python scripts/encoder_error.py --teacher T.pt --generator G16.pt --encoder_path E.pt --input bundled:mnist_test \
        --limit 500 --out scores.json

Per image (its own label), against z_ode = PF-ODE(x + start_sigma n_i) as the latents were made: the relative
error ||E(x) - z_ode|| / ||z_ode||; the floor that no deterministic E(x) can go below much, the same error between
two ODE latents of the same image with two noise draws; ||E(x)|| / ||z_ode||; the PSNR of G(E(x)) against G(z_ode)
and against x (G at the teacher's resolution); and the PSNR of the teacher's ODE decoding of each latent against x.
Spreads: std over --num_blocks disjoint blocks. Writes a JSON and prints it.
"""

import json
import sys

import numpy as np
import torch

from pagoda import applications as app
from pagoda import script_util
from pagoda.checkpoint import atomic_write_text
from pagoda.image_datasets import center_crop_arr, open_source
from pagoda.image_util import from_uint8, psnr
from pagoda.model_io import load_encoder, load_generator, load_teacher
from pagoda.sampling import heun_decode

F, _c = script_util.Flag, script_util
GROUPS = {"main": dict(
    teacher=F("", "the teacher export whose PF-ODE latents are the reference; required"),
    generator=F("", "a generator export at the teacher's resolution (stage 2) that decodes both latents; required"),
    encoder_path=F("", "the amortised encoder export (<run_dir>/exports/encoder_ema<rate>.pt); required"),
    input=F("bundled:mnist_test", "held-out images: bundled:<name>, a folder or an ADM .npz"),
    limit=F(500, "images of --input, drawn at random (seeded) and sorted", _c.at_least(2)),
    batch_size=F(100, "images per batch", _c.at_least(1)),
    num_blocks=F(5, "disjoint blocks the spreads (std) are taken over", _c.at_least(1)),
    out=F("", "also write the scores to this JSON file"),
)}


def per_image(teacher, generator, encoder, x, y, seeds):
    """{name: (n,) tensor} of the scores of one batch (see the module docstring)."""
    s = encoder.sidecar["latent_settings"]
    sigmas = app.ode_sigmas(num_steps=s["num_steps"], start_sigma=s["start_sigma"], sigma_min=s["sigma_min"],
                            sigma_max=s["sigma_max"], rho=s["rho"])
    z_ode = app.encode_ode(teacher, x, y, sigmas, start_sigma=s["start_sigma"], seeds=seeds)
    z_other = app.encode_ode(teacher, x, y, sigmas, start_sigma=s["start_sigma"], seeds=[k + 10**6 for k in seeds])
    z_enc = encoder.encode(x, y, seeds=seeds)  # from the same x + start_sigma n as z_ode
    g_ode, g_enc = app.decode(generator, z_ode, y), app.decode(generator, z_enc, y)
    t_ode = heun_decode(teacher, z_ode, sigmas, y).clamp(-1, 1)
    t_enc = heun_decode(teacher, z_enc, sigmas, y).clamp(-1, 1)
    return {"latent_rel_err": app.latent_error(z_enc, z_ode),
            "latent_rel_err_two_ode_draws": app.latent_error(z_other, z_ode),
            "latent_norm_ratio": z_enc.flatten(1).norm(dim=1) / z_ode.flatten(1).norm(dim=1),
            "psnr_G_enc_vs_G_ode": psnr(g_enc, g_ode), "psnr_G_enc_vs_x": psnr(g_enc, x),
            "psnr_G_ode_vs_x": psnr(g_ode, x), "psnr_teacher_decode_enc_vs_x": psnr(t_enc, x),
            "psnr_teacher_decode_ode_vs_x": psnr(t_ode, x)}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"teacher": "the teacher export", "generator": "a generator export at "
                                              "the teacher's resolution", "encoder_path": "the encoder export"})
    teacher, generator = load_teacher(args.teacher), load_generator(args.generator)
    encoder = load_encoder(args.encoder_path)
    app.check_models(teacher, generator, teacher_path=args.teacher, generator_path=args.generator)
    app.check_encoder(encoder, teacher, teacher_path=args.teacher, encoder_path=args.encoder_path)
    size = teacher.backbone.config["image_size"]
    if generator.output_size != size:
        sys.exit(f"error: the generator {args.generator} makes {generator.output_size} px images; use one at the "
                 f"teacher's {size} px")
    source = open_source(args.input)
    n = min(args.limit, len(source))
    scores = {}
    for b in range(0, n, args.batch_size):
        idx = range(b, min(n, b + args.batch_size))
        x = from_uint8(np.stack([center_crop_arr(source.load_pil(i), size) for i in idx]))
        y = torch.tensor([source.labels[i] for i in idx])
        for k, v in per_image(teacher, generator, encoder, x, y, list(idx)).items():
            scores.setdefault(k, []).append(v)
    out = {"num_images": n, "input": args.input}
    for k, v in scores.items():
        out[k] = app.block_spread(torch.cat(v).numpy(), args.num_blocks)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        atomic_write_text(text, args.out)


if __name__ == "__main__":
    main()
