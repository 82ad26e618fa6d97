"""Tiny teacher, encode and stage-2 runs through the scripts' own main(argv), in this process (8 px, 12 images)."""

import os

import numpy as np

import encode

from pagoda import logger
from tests.helpers.methods import entry

TEACHER_FLAGS = ["--image_size", "8", "--model_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
                 "--attention_resolutions", "2", "--num_head_channels", "32", "--global_batch_size", "4",
                 "--warmup_steps", "0", "--total_steps", "2", "--save_interval", "2", "--log_interval", "1",
                 "--preview_interval", "0"]
STAGE2_FLAGS = ["--feature_networks", "tiny", "--d_channel_scale", "0.25", "--global_batch_size", "4",
                "--lr_generator", "1e-3", "--total_steps", "2", "--save_interval", "2", "--log_interval", "1",
                "--preview_interval", "0"]


def tiny_dataset(folder, n=12, size=12):
    """An ADM-format npz of n random 12 px images with labels 0..3."""
    os.makedirs(str(folder), exist_ok=True)
    rng = np.random.RandomState(0)
    path = os.path.join(str(folder), "data.npz")
    np.savez(path, arr_0=rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8), arr_1=np.arange(n) % 4)
    return path


def teacher_run(run_dir, data, *extra):
    """train.py --method diffusion with TEACHER_FLAGS (later flags win); returns the EMA export's path."""
    _main(entry("diffusion"), ["--data_dir", data, "--run_dir", str(run_dir), *TEACHER_FLAGS, *extra])
    return os.path.join(str(run_dir), "exports", "denoiser_ema0.999.pt")


def encode_run(out_dir, teacher, data, *extra):
    """encode.py, 3 steps, fp32 storage (later flags win)."""
    _main(encode, ["--teacher", teacher, "--data_dir", data, "--out_dir", str(out_dir), "--num_steps", "3",
                   "--chunk_size", "8", "--batch_size", "4", "--flips", "0", "--storage", "fp32", *extra])
    return str(out_dir)


def stage2_run(run_dir, teacher, latents, *extra):
    """train.py --method pagoda (stage 2) with STAGE2_FLAGS (later flags win); returns the EMA export's path."""
    _main(entry("pagoda"), ["--init_from", teacher, "--latent_dir", latents, "--run_dir", str(run_dir), *STAGE2_FLAGS,
                         *extra])
    return os.path.join(str(run_dir), "exports", "generator_ema0.999.pt")


def _main(script, argv):
    try:
        script.main(argv)
    finally:  # later tests must not log into this run's folder
        logger.configure(None)
