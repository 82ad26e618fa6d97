"""Probe a discriminator alone: can its heads, on a given feature network, tell real images from a frozen
generator's samples at all? Held-out accuracy says whether the adversarial half of a run can work before it runs.

    python scripts/probe_discriminator.py --generator runs/quickstart/stage2/exports/generator_ema0.99.pt \
        --feature_networks random_conv,teacher,tf_efficientnet_lite0 --feature_weights ,TEACHER.pt, --out probe.json

For each feature network: a ProjectedDiscriminator as stage 2 builds it (the same heads, shaped by --d_channel_scale,
--d_norm and --feature_resolution as in --method pagoda) is trained with the hinge loss on `--num_train`
reals (the training split of --data_dir) against as many samples of the frozen generator (fresh seeded latents,
balanced labels), then scored on `--num_heldout` other reals and other samples with the heads in eval mode
(BatchNorm on its running statistics): accuracy counts a real whose mean logit is > 0 and a sample whose mean
logit is < 0 (0.5 is chance), overall and per head. G and the feature network are frozen, so their features are
computed once and cached in memory (fp16); no augmentation. --feature_resolution resizes the images before the
random and timm networks (0: their own size); the teacher network always works at the teacher's resolution.
"""

import json
import os
import time

import torch

from pagoda import checkpoint, script_util
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import create_feature_network
from pagoda.image_datasets import ImageDataset, open_source
from pagoda.losses import hinge_d_loss
from pagoda.methods import gan
from pagoda.methods.gan import discriminator_diagnostics, head_names
from pagoda.model_io import load_generator
from pagoda.random_util import StackedRandomGenerator
from pagoda.sample_util import GeneratorSampler

F, _c = script_util.Flag, script_util
# The discriminator as stage 2 builds it: the pagoda method's flags of the same names.
DISCRIMINATOR_FLAGS = script_util.with_defaults(
    {k: gan.DISCRIMINATOR_FLAGS[k] for k in ("feature_networks", "feature_weights", "d_channel_scale", "d_norm",
                                              "feature_resolution", "feature_seed")}, feature_weights=("",))
GROUPS = {
    "data": dict(
        generator=F("", "the frozen generator export whose samples the heads must tell from reals; required"),
        data_dir=F("bundled:mnist", "the real images (its training split): bundled:<name>, a folder or an .npz"),
        num_train=F(1000, "reals (and as many samples) the heads train on", _c.at_least(8)),
        num_heldout=F(500, "other reals (and samples) the accuracy is measured on", _c.at_least(2)),
        seed=F(0, "seed of the image draw, the samples' latents and the heads", _c.at_least(0)),
    ),
    "discriminator": dict(
        DISCRIMINATOR_FLAGS,
        lr=F(2e-3, "learning rate of the heads (Adam, betas (0, 0.99))", _c.greater_than(0)),
        steps=F(300, "training steps of the heads", _c.at_least(1)),
        batch_size=F(64, "reals (and as many samples) per step", _c.at_least(2)),
    ),
    "output": dict(out=F("", "write the report (accuracies per network and head) to this JSON file; '': the "
                         "console summary only")),
}


def real_images(data_dir, size, count, seed):
    """`count` seeded real images (x in [-1, 1], labels) of the data's training split at the generator's size."""
    dataset = ImageDataset(open_source(data_dir), image_size=size)
    if count > len(dataset):
        raise ValueError(f"{data_dir} has {len(dataset)} images, fewer than the {count} the probe needs")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    items = [dataset.load(i) for i in order]
    return torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])


@torch.no_grad()
def fake_images(generator, labels, seed, *, count=None, batch=250):
    """The frozen generator's samples for `labels` (or `count` unconditional ones), sample i from seed `seed + i`."""
    sampler, out = GeneratorSampler(generator), []
    count = len(labels) if labels is not None else count
    for start in range(0, count, batch):
        seeds = list(range(seed + start, seed + min(start + batch, count)))
        y = None if labels is None else labels[start:start + len(seeds)]
        out.append(sampler(StackedRandomGenerator("cpu", seeds), y).clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def cached_features(disc, images, batch=100):
    """{network: [levels]} of every image, fp16 (frozen network, computed once)."""
    chunks = [disc.extract(images[i:i + batch]) for i in range(0, len(images), batch)]
    return {name: [torch.cat([c[name][k] for c in chunks]).half() for k in range(len(chunks[0][name]))]
            for name in chunks[0]}


def _take(features, index):
    return {name: [level[index].float() for level in levels] for name, levels in features.items()}


def train_heads(disc, real, fake, y, *, steps, batch_size, lr, seed):
    """Hinge-loss training of the heads on cached features; returns the last step's loss."""
    params = [p for p in disc.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
    generator = torch.Generator().manual_seed(seed)
    n = len(next(iter(real.values()))[0])
    disc.train()
    for _ in range(steps):
        index = torch.randint(n, (batch_size,), generator=generator)
        y_batch = None if y is None else y[index]
        loss = hinge_d_loss(disc(None, y_batch, features=_take(real, index)),
                            disc(None, y_batch, features=_take(fake, index))).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return float(loss.detach())


@torch.no_grad()
def heldout_accuracy(disc, real, fake, y):
    """Overall and per-head accuracy on held-out features, the heads in eval mode."""
    disc.eval()
    every = torch.arange(len(next(iter(real.values()))[0]))
    terms = discriminator_diagnostics(disc(None, y, features=_take(real, every)),
                                      disc(None, y, features=_take(fake, every)), head_names(disc))
    return {k: float(v.mean()) for k, v in terms.items()}


def probe(name, weights, generator, reals, fakes, args):
    net = create_feature_network(name, weights_path=weights or None, seed=args.feature_seed,
                                 input_size=args.feature_resolution)
    size, num_classes = generator.backbone.config["output_size"], generator.backbone.config["num_classes"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        disc = ProjectedDiscriminator(feature_networks={name: net}, image_size=size, num_classes=num_classes,
                                      channel_scale=args.d_channel_scale, norm=args.d_norm)
    start = time.time()
    (x_real, y), x_fake = reals, fakes
    real, fake = cached_features(disc, x_real), cached_features(disc, x_fake)
    feature_seconds = time.time() - start
    n = args.num_train
    train = slice(0, n)
    last_loss = train_heads(disc, _take_rows(real, train), _take_rows(fake, train), _rows(y, train), steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    held = slice(n, None)
    result = heldout_accuracy(disc, _take_rows(real, held), _take_rows(fake, held), _rows(y, held))
    return {"feature_network": name, "input_size": net.input_size, "image_size": size,
            "head_depths": [h.depth for h in disc.heads[name]], "final_train_loss": last_loss,
            "feature_seconds": feature_seconds, "train_seconds": time.time() - start - feature_seconds, **result}


def _rows(y, rows):
    return None if y is None else y[rows]


def _take_rows(features, rows):
    return {name: [level[rows] for level in levels] for name, levels in features.items()}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"generator": "a stage-2 or stage-3 generator export"})
    weights = list(args.feature_weights) + [""] * (len(args.feature_networks) - len(args.feature_weights))
    generator = load_generator(args.generator)
    size, num_classes = generator.backbone.config["output_size"], generator.backbone.config["num_classes"]
    x_real, labels = real_images(args.data_dir, size, args.num_train + args.num_heldout, args.seed)
    labels = labels if num_classes else None  # a sample and a real of the same index share the label
    reals = (x_real, labels)
    fakes = fake_images(generator, labels, seed=10**6 + args.seed, count=len(x_real))
    results = [probe(name, w, generator, reals, fakes, args) for name, w in zip(args.feature_networks, weights)]
    for r in results:
        print(f"{r['feature_network']:>24} (input {r['input_size']} px, head depths {r['head_depths']}): held-out "
              f"accuracy {r['accuracy']:.3f}, per head " +
              ", ".join(f"{k[len('accuracy_'):]} {v:.3f}" for k, v in r.items() if k.startswith("accuracy_")) +
              f"; features {r['feature_seconds']:.0f} s, training {r['train_seconds']:.0f} s")
    report = {"generator": os.path.abspath(args.generator), "settings": script_util.resolved_config(args),
              "results": results}
    if args.out:
        checkpoint.atomic_write_text(json.dumps(report, indent=1), args.out)
    return report


if __name__ == "__main__":
    main()
