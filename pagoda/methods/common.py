"""What every method shares: the training flags the loop reads, the run description a method's build() returns,
and the per-rank data streams (real images, or (latent, image) pairs).
"""

import dataclasses

from .. import dist_util, logger, script_util
from ..amp import PRECISION_CHOICES
from ..image_datasets import ImageDataset, infinite_batches, open_source

F, _c = script_util.Flag, script_util
# Flags TrainLoop consumes; a method changes their defaults and adds its own (`train_group(**changes)`).
TRAIN_FLAGS = dict(
    run_dir=F("runs/train", "folder of the run: log, config.json, checkpoints/ (training states), exports/ "
              "(EMA networks) and samples/ (previews). Rerunning with the same folder resumes from its newest "
              "training state", resume="free"),
    global_batch_size=F(32, "images per optimiser step, summed over all processes (a multiple of their number); "
                        "changing it changes the training, so scale the learning rates with it",
                        _c.at_least(1)),
    microbatch=F(0, "per-process images per forward/backward pass, gradients accumulated up to the per-process "
                 "batch (which it must divide); lower it when memory runs out. 0: the whole per-process batch",
                 _c.at_least(0), resume="free"),
    ema_rates=F((0.999,), "EMA decay per optimiser step, one exported network per rate "
                "(exports/<player>_ema<rate>.pt); the half-life is ln(0.5) / ln(rate) steps",
                _c.each(_c.in_range(0, 1)), resume="fixed"),
    precision=F("auto", "autocast precision of the networks: fp32, bf16, fp16 (with loss scaling) or auto (bf16 "
                "where the device computes it natively, else fp32); losses, parameters and optimiser states stay "
                "fp32", _c.one_of(*PRECISION_CHOICES)),
    total_steps=F(1000, "training steps of the whole run (not of this invocation): raise it and rerun to train "
                  "on from the last state", _c.at_least(1), resume="free"),
    log_interval=F(100, "steps between log lines (progress.csv and the console)", _c.at_least(1), resume="free"),
    save_interval=F(1000, "steps between saved training states and EMA exports (the last step always saves)",
                    _c.at_least(1), resume="free"),
    keep_checkpoints=F(2, "newest training states kept in checkpoints/ (older ones are deleted)",
                       _c.at_least(1), resume="free"),
    seed=F(0, "seed of everything the run draws (initial weights, data order, noise); a resumed run continues "
           "the same random streams", _c.at_least(0)),
    preview_interval=F(1000, "steps between preview grids sampled from the EMA network (run_dir/samples/<step>.png);"
                       " 0: none", _c.at_least(0), resume="free"),
    allow_config_change=F(False, "when resuming, accept changed guarded settings (learning rates, loss weights, "
                          "...); architecture and data changes are refused anyway (use a new --run_dir)",
                          resume="free"),
    log_format=F(("csv",), "where the logged scalars go, in <run_dir>: csv (progress.csv; always included) and "
                 "tensorboard (event files beside it, with the preview grids; watch with `tensorboard --logdir "
                 "<run_dir or its parent>`)",
                 [_c.each(_c.one_of(*logger.LOG_FORMATS), distinct=True),
                  lambda v: None if "csv" in v else "must include csv (reports read progress.csv)"], resume="free"),
    compile=F(False, "torch.compile the trained networks after two eager steps; logs the compile time, the "
              "speed-up and after how many steps it pays for itself. Minutes of compiling for a fraction of every "
              "step: for runs of tens of thousands of steps (the ImageNet stages), not the bundled recipes. Needs a "
              "C++ compiler on CPU. Checkpoints and exports are the same with or without it", resume="free"),
)
# --lr_schedule of the methods that anneal their learning rate: "linear" to 0 over --total_steps, or "constant".
LR_SCHEDULES = ("linear", "constant")
IMAGE_DATA_FLAGS = dict(
    data_dir=F("bundled:mnist", "training images: bundled:<name> (mnist, mnist5k, fashion, ...), a folder "
               "in the ImageNet train layout (one sub-folder per class), a flat folder of <class>_<anything> images, "
               "or an ADM-format .npz", resume="fixed"),
    image_size=F(0, "side in pixels the images are resized and centre-cropped to (ADM preprocessing); 0: the "
                 "resolution of the network the run starts from", _c.at_least(0), resume="fixed"),
    random_flip=F(False, "flip each training image horizontally with probability 1/2 (not for digits)",
                  resume="fixed"),
    num_workers=F(0, "DataLoader worker processes decoding images; 0 decodes in the training process (enough "
                  "for in-memory data such as the bundled sets)", _c.at_least(0), resume="free"),
    cache_images=F(True, "keep every decoded, cropped image in memory after its first use; turn off for "
                   "datasets larger than the memory", resume="free"),
    on_error=F("raise", "files that fit no class while indexing, and images that fail to decode while training: "
               "raise stops with an error naming the file; skip leaves them out and logs how many",
               _c.one_of("raise", "skip")),
)

# The (latent, image) pairs scripts/encode.py writes, as stage 2/3 and the amortised encoder read them.
PAIR_DATA_FLAGS = dict(
    latent_dir=F("runs/latents", "folder of the teacher's PF-ODE latents (scripts/encode.py --out_dir); they must "
                 "come from the teacher the run descends from", resume="fixed"),
    data_dir=F("", "the images of the latents; '': the data_dir recorded in the latents' manifest (pass it when "
               "the data moved, or for the same images at a higher resolution)", resume="fixed"),
    num_workers=IMAGE_DATA_FLAGS["num_workers"],
    cache_images=IMAGE_DATA_FLAGS["cache_images"],
)


def train_group(**changes):
    """TRAIN_FLAGS with a method's defaults (plain values) and its own training flags (Flags)."""
    return script_util.with_defaults(TRAIN_FLAGS, **changes)


def decay_steps(config):
    """OptimSpec.decay_steps of --lr_schedule: the run's --total_steps when linear, 0 (no anneal) when constant."""
    return config["total_steps"] if config["lr_schedule"] == "linear" else 0


def image_data_group(**changes):
    return script_util.with_defaults(IMAGE_DATA_FLAGS, **changes)


# How a resumed run may change the records methods add to config.json (Run.record), as script_util.flag_class reads
# them. What the checkpoint's tensors are shaped by or were trained on is fixed; an architecture record also holds
# two run settings, which keep the classes of their flags. Records not named here are guarded.
ARCHITECTURE_RECORDS = ("unet", "dimr", "generator", "encoder")
RECORD_CLASSES = {
    **{key: "fixed" for key in ARCHITECTURE_RECORDS + ("dataset", "dataset_identity", "num_images", "num_classes",
                                                       "num_pairs")},
    **{f"{net}.{key}": cls for net in ARCHITECTURE_RECORDS for key, cls in (("use_checkpoint", "free"),
                                                                             ("dropout", "guarded"))},
}


@dataclasses.dataclass
class Run:
    """What a method's build(config, device) hands the training entry point.

    objective: the Objective; data: `data(start_batch) -> iterator` of per-rank batches (see TrainLoop);
    optim: {player: OptimSpec}; callbacks: preview grids, monitors; record: entries config.json adds to the flags
    (architecture and data records, compared on resume as RECORD_CLASSES says); title: the progress bar's; finish:
    called after the loop.
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
