"""What every method shares: the training flags the loop reads, the run description a method's build() returns,
and the per-rank data streams (real images, or (latent, image) pairs).
"""

import dataclasses

from .. import dist_util, logger, script_util
from ..amp import PRECISION_CHOICES
from ..image_datasets import ImageDataset, infinite_batches, open_source

# Flags TrainLoop consumes, with the defaults a method may override (`train_group(**overrides)`).
TRAIN_FLAGS = dict(run_dir="runs/train", global_batch_size=32, microbatch=0, ema_rates=(0.999,), precision="auto",
                   total_steps=1000, log_interval=100, save_interval=1000, keep_checkpoints=2, seed=0,
                   preview_interval=1000, allow_config_change=False)
IMAGE_DATA_FLAGS = dict(data_dir="bundled:mnist", image_size=0, random_flip=False, num_workers=0, cache_images=True,
                        on_error="raise")

_c = script_util
TRAIN_CONSTRAINTS = {
    "global_batch_size": _c.at_least(1), "microbatch": _c.at_least(0), "ema_rates": _c.each(_c.in_range(0, 1)),
    "precision": _c.one_of(*PRECISION_CHOICES), "total_steps": _c.at_least(1), "log_interval": _c.at_least(1),
    "save_interval": _c.at_least(1), "keep_checkpoints": _c.at_least(1), "seed": _c.at_least(0),
    "preview_interval": _c.at_least(0),
}
IMAGE_DATA_CONSTRAINTS = {"image_size": _c.at_least(0), "num_workers": _c.at_least(0),
                          "on_error": _c.one_of("raise", "skip")}


def train_group(**overrides):
    """TRAIN_FLAGS with a method's defaults and its own training flags (learning rates, ...)."""
    return {**TRAIN_FLAGS, **overrides}


def image_data_group(**overrides):
    return {**IMAGE_DATA_FLAGS, **overrides}


@dataclasses.dataclass
class Run:
    """What a method's build(config, device) hands the training entry point.

    objective: the Objective; data: `data(start_batch) -> iterator` of per-rank batches (see TrainLoop);
    optim: {player: OptimSpec}; callbacks: preview grids, monitors; record: entries config.json adds to the flags
    (architecture and data records, compared on resume); title: the progress bar's; finish: called after the loop.
    """
    objective: object
    data: object
    optim: dict
    callbacks: list = dataclasses.field(default_factory=list)
    record: dict = dataclasses.field(default_factory=dict)
    title: str = "training"
    finish: object = None


def stream(dataset, config, *, labels=True):
    """The loop's data function over `dataset` (this rank's shard): batch k is a pure function of (seed, k)."""
    per_rank = config["global_batch_size"] // dist_util.get_world_size()

    def data(start_batch):
        for batch in infinite_batches(dataset, batch_size=per_rank, seed=config["seed"], start_batch=start_batch,
                                      num_workers=config["num_workers"]):
            yield batch if labels else {k: v for k, v in batch.items() if k != "y"}
    return data


def image_dataset(config, *, image_size):
    """(source, ImageDataset shard of this rank) for IMAGE_DATA_FLAGS at `image_size`."""
    source = open_source(config["data_dir"], on_error=config["on_error"])
    if source.num_skipped:
        logger.log(f"on_error=skip: skipped {source.num_skipped} files while indexing {config['data_dir']}")
    dataset = ImageDataset(source, image_size=image_size, random_flip=config["random_flip"],
                           shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                           on_error=config["on_error"], cache=config["cache_images"])
    return source, dataset


def export_lineage(origin):
    """Sidecar entries the generator's exports carry from its origin: the teacher (so stage 3 can check the
    latents it is given) and that teacher's null class (an embedding row G inherits but must never be sampled
    with; absent for an unguided teacher, so those exports are unchanged)."""
    lineage = {"teacher_sha256": origin["teacher_sha256"]} if origin["teacher_sha256"] else {}
    if origin["null_class"] is not None:
        lineage["null_class"] = origin["null_class"]
    if origin.get("dataset"):  # the teacher's training data, so that stage 3 refuses latents of another domain
        lineage["dataset"] = origin["dataset"]
    return lineage or None
