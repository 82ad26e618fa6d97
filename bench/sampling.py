"""One-step generator vs teacher sampling throughput (same network), and grown generator cost vs its parent.

    python bench/sampling.py [--batch 100] [--heun_steps 18] [--device cpu]

Both samplers go through pagoda.sample_util (the code the sampling script runs), with random weights: speed does
not depend on them. Ratios are measured side by side in one run.
"""

import argparse

import torch

from common import BUNDLED, report_ratio, timed
from pagoda.generator import Generator, grow
from pagoda.precond import Denoiser
from pagoda.random_util import StackedRandomGenerator
from pagoda.sample_util import GeneratorSampler, TeacherSampler
from pagoda.unet import UNetModel


def images_per_s(sampler, batch, device):
    rng = StackedRandomGenerator(device, list(range(batch)))
    y = torch.arange(batch, device=device) % 10
    return batch / timed(lambda: sampler(rng, y), repeats=3)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--heun_steps", type=int, default=18)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = UNetModel(**BUNDLED).to(args.device).eval()
    teacher = TeacherSampler(Denoiser(backbone), sampler="heun", num_steps=args.heun_steps)
    one_step = GeneratorSampler(Generator(backbone))
    grown = GeneratorSampler(Generator(grow(backbone)[0].to(args.device).eval()))
    rates = {name: images_per_s(s, args.batch, args.device)
             for name, s in (("teacher", teacher), ("one_step", one_step), ("grown", grown))}
    print(f"bundled network, batch {args.batch}, device {args.device}, threads {torch.get_num_threads()}")
    print(f"teacher Heun {args.heun_steps} steps (NFE {teacher.nfe}): {rates['teacher']:.1f} img/s; one-step: "
          f"{rates['one_step']:.1f} img/s; grown 2x one-step: {rates['grown']:.1f} img/s")
    report_ratio("one_step_vs_teacher_speed", rates["one_step"] / rates["teacher"], f"NFE 1 vs {teacher.nfe}")
    report_ratio("grown_vs_parent_cost", rates["one_step"] / rates["grown"], "time per image, 32 px vs 16 px output")


if __name__ == "__main__":
    main()
