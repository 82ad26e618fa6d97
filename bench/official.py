"""The project's UNet against the official one (openai/consistency_models, `cm/unet.py`), side by side: the same
weights in both, their outputs and gradients compared, then a training step (forward, backward of a squared loss,
no optimiser) and a no-grad forward of each timed in alternation (rounds interleaved, medians), on the three
configurations of issue 37:

  bundled         the bundled recipe's teacher: 16 px, 32 channels, batch 64
  imagenet64_c64  the ImageNet-64 layout (levels, attention at 32/16/8 px, 1000 classes) at 64 channels, batch 4
  imagenet64      the EDM ImageNet-64 teacher: 192 channels, batch 2 (two 296M-parameter networks: ~6 GB of RAM)

The official code is never part of this project. Get a checkout and name its folder (the one holding `cm/`):

    git clone https://github.com/openai/consistency_models /path/to/consistency_models
    PAGODA_OFFICIAL_CM=/path/to/consistency_models python bench/official.py --device cpu --threads 2

Only its `cm` package is imported (needs numpy and torch). Its AttentionBlock builds flash-attn's kernel, a CUDA
package; the bench gives it the official fp32 fallback `cm.unet.QKVAttention` instead (the same [q | k | v] layout
and formula). The official network reads c_noise = 250 ln(sigma) as its `timesteps`; the project's reads sigma.
--kernels times the project once per attention kernel of pagoda.unet.ATTENTION_KERNELS (the measurement behind
pagoda.unet.ATTENTION_BY_DEVICE); by default the project runs with the kernel its device picks.

Prints `RATIO official_over_project[_<kernel>]_{train,forward}_<config>`: official seconds / project seconds, above 1
when the project is faster. Exits non-zero when the two networks disagree (outputs or gradients) beyond fp32
rounding. A few minutes on 2 CPU threads with the defaults; timings are only worth quoting from an idle machine.
"""

import argparse
import importlib
import importlib.util
import os
import sys

import torch

from common import BUNDLED, alternated, cpu_banner, report_ratio
from pagoda import unet
from pagoda.unet import UNetModel, imagenet64_config

ENV = "PAGODA_OFFICIAL_CM"
CONFIGS = {
    "bundled": (BUNDLED, 64),
    "imagenet64_c64": (dict(imagenet64_config(64), model_channels=64, channels_high=64), 4),
    "imagenet64": (imagenet64_config(64), 2),
}
# fp32 rounding of two summation orders over ~50 layers; a wrong weight or layout differs by O(1)
TOLERANCE = 1e-4


def official_unet_module(folder):
    """The official `cm.unet` module from a checkout folder, its flash attention replaced by its fp32 fallback."""
    if not folder:
        sys.exit(f"error: set {ENV} to a checkout of github.com/openai/consistency_models (see bench/official.py)")
    if not os.path.isfile(os.path.join(folder, "cm", "unet.py")):
        sys.exit(f"error: {ENV}={folder} has no cm/unet.py; it must name the checkout's top folder")
    package = os.path.join(os.path.abspath(folder), "cm")
    spec = importlib.util.spec_from_file_location("cm", os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    sys.modules["cm"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["cm"])
    module = importlib.import_module("cm.unet")
    module.QKVFlashAttention = lambda channels, num_heads, **_: module.QKVAttention(num_heads)
    return module


def official_network(cm_unet, config):
    if config["output_size"] != config["image_size"]:
        raise ValueError("the official network has no grown high-resolution levels; compare a base network")
    return cm_unet.UNetModel(
        image_size=config["image_size"], in_channels=config["in_channels"], model_channels=config["model_channels"],
        out_channels=config["out_channels"], num_res_blocks=config["num_res_blocks"],
        attention_resolutions=tuple(config["attention_resolutions"]), dropout=config["dropout"],
        channel_mult=tuple(config["channel_mult"]), num_classes=config["num_classes"], use_checkpoint=False,
        use_fp16=False, num_head_channels=config["num_head_channels"],
        use_scale_shift_norm=config["use_scale_shift_norm"], resblock_updown=config["resblock_updown"])


def fill(model, seed=0):
    """Random weights everywhere (the zero-initialised output convs too, else both networks return ~0):
    N(0, 0.2^2 / fan_in), GroupNorm gains around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 / fan_in**0.5))
            if p.ndim == 1 and name.endswith("weight"):  # GroupNorm gains (Linear / Conv weights have ndim > 1)
                p.add_(1.0)
    return model


def pair(name, cm_unet, device):
    """(project, official) networks of config `name` with the same weights, and (x, sigma, y) of its batch."""
    config, batch = CONFIGS[name]
    torch.manual_seed(0)
    project = fill(UNetModel(**config))
    official = official_network(cm_unet, project.config)
    official.load_state_dict(project.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(1)
    size = config["image_size"]
    x = torch.randn(batch, 3, size, size, generator=gen)
    sigma = torch.exp(torch.randn(batch, generator=gen) * 1.2 - 1.2)
    y = torch.randint(0, config["num_classes"], (batch,), generator=gen) if config["num_classes"] else None
    return project.to(device), official.to(device), tuple(t if t is None else t.to(device) for t in (x, sigma, y))


def callers(project, official, inputs):
    """{"project": f, "official": f}: the networks' outputs for the same inputs (each in its noise convention)."""
    x, sigma, y = inputs
    c_noise = 250.0 * torch.log(sigma + 1e-44)
    return {"project": lambda: project(x, sigma, y), "official": lambda: official(x, c_noise, y)}


def check_agreement(name, nets, calls):
    """Largest output and gradient differences, relative to the largest magnitude; exits when beyond TOLERANCE."""
    outs, grads = {}, {}
    for key, call in calls.items():
        out = call()
        out.square().mean().backward()
        outs[key] = out.detach()
        grads[key] = {n: p.grad.clone() for n, p in nets[key].named_parameters()}
        nets[key].zero_grad(set_to_none=True)
    out_diff = ((outs["project"] - outs["official"]).abs().max() / outs["official"].abs().max()).item()
    # against the largest gradient of all: some are zero in exact arithmetic (a conv bias before a GroupNorm)
    grad_scale = max(g.abs().max() for g in grads["official"].values())
    grad_diff = max(((grads["project"][n] - g).abs().max() / grad_scale).item() for n, g in grads["official"].items())
    print(f"{name}: relative max difference, output {out_diff:.2e}, parameter gradients {grad_diff:.2e}", flush=True)
    if not (out_diff <= TOLERANCE and grad_diff <= TOLERANCE):
        sys.exit(f"error: {name}: the project's network does not reproduce the official one")


def timed_phases(nets, calls, kernels, device, rounds):
    """{phase: {variant: median seconds}} for the train step and the forward; variants alternate within rounds."""
    def variants(step):
        out = {"official": lambda: step("official")}
        for kernel in kernels:
            out[f"project_{kernel}" if kernel else "project"] = lambda k=kernel: with_kernel(k, device,
                                                                                              lambda: step("project"))
        return out

    def train(key):
        calls[key]().square().mean().backward()
        nets[key].zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward(key):
        calls[key]()

    for net in nets.values():
        net.train()
    seconds = {"train": alternated(variants(train), rounds=rounds)}
    for net in nets.values():
        net.eval()
    seconds["forward"] = alternated(variants(forward), rounds=rounds)
    return seconds


def with_kernel(kernel, device, fn):
    """fn() with the project's attention kernel on `device` set to `kernel` ("" leaves the device's choice)."""
    if not kernel:
        return fn()
    table = unet.ATTENTION_BY_DEVICE
    device_type = torch.device(device).type
    previous = table.get(device_type)
    table[device_type] = kernel
    try:
        return fn()
    finally:
        if previous is None:
            del table[device_type]
        else:
            table[device_type] = previous


def bench_config(name, cm_unet, args):
    project, official, inputs = pair(name, cm_unet, args.device)
    if args.batch:
        inputs = tuple(t if t is None else t[:args.batch] for t in inputs)
    nets = {"project": project, "official": official}
    calls = callers(project, official, inputs)
    check_agreement(name, nets, calls)
    seconds = timed_phases(nets, calls, args.kernels, args.device, args.rounds)
    for phase, times in seconds.items():
        print(f"{name} {phase} (batch {len(inputs[0])}): " +
              " | ".join(f"{k} {1e3 * v:.1f} ms" for k, v in times.items()), flush=True)
        for variant in times:
            if variant != "official":
                suffix = variant[len("project"):]
                report_ratio(f"official_over_project{suffix}_{phase}_{name}", times["official"] / times[variant],
                             "official seconds / project seconds")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both networks run")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list from {list(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds per phase, each calling every variant once (after one warm-up round)")
    parser.add_argument("--batch", type=int, default=0,
                        help="cut every config's batch to this many (0: the issue's batches 64 / 4 / 2)")
    parser.add_argument("--kernels", default="",
                        help=f"comma list of project attention kernels to time, from {sorted(unet.ATTENTION_KERNELS)} "
                             "(empty: the one the device picks)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    names = [n for n in args.configs.split(",") if n]
    if not names or set(names) - set(CONFIGS):
        parser.error(f"--configs takes names from {list(CONFIGS)}; got {args.configs!r}")
    args.kernels = [k for k in args.kernels.split(",") if k] or [""]
    if set(args.kernels) - {""} - set(unet.ATTENTION_KERNELS):
        parser.error(f"--kernels takes names from {sorted(unet.ATTENTION_KERNELS)}")
    if args.rounds < 1 or args.batch < 0 or args.threads < 0:
        parser.error("--rounds must be at least 1, --batch and --threads at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cm_unet = official_unet_module(os.environ.get(ENV, ""))
    print(cpu_banner(args.device), flush=True)
    for name in names:
        bench_config(name, cm_unet, args)


if __name__ == "__main__":
    main()
