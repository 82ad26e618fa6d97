"""Entry point for the multi-process and kill/resume tests:
toy_train.py RUN_DIR STEPS [--kill_at N] [--clean] [--keep K] [--global_noise]."""

import os
import signal

import torch

from pagoda import dist_util, logger, random_util
from pagoda.train_util import OptimSpec, TrainLoop
from tests.helpers.toy import ToyObjective, toy_data


class KillAt:
    """Simulates a crash: SIGKILL right after `step` (no chance to save anything more)."""

    interval = 1

    def __init__(self, step):
        self.kill_step = step

    def __call__(self, loop):
        if loop.step == self.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("steps", type=int)
    parser.add_argument("--kill_at", type=int, default=None)
    parser.add_argument("--clean", action="store_true", help="no per-rank noise (1 vs N process comparison)")
    parser.add_argument("--keep", type=int, default=3, help="training states kept")
    parser.add_argument("--global_noise", action="store_true", help="noise from the global generator (dropout)")
    args = parser.parse_args()
    run_dir, steps, kill_at = args.run_dir, args.steps, args.kill_at
    torch.set_num_threads(1)
    dist_util.setup_dist()
    logger.configure(run_dir)
    objective = ToyObjective(noisy=not args.clean, global_noise=args.global_noise)
    random_util.seed_all(0, "run", dist_util.get_rank())  # as the training scripts seed it
    loop = TrainLoop(objective=objective, data=toy_data(8), run_dir=run_dir, global_batch_size=8, microbatch=2,
                     optim={"model": OptimSpec(name="adam", lr=1e-2), "critic": OptimSpec(name="radam", lr=1e-2)},
                     total_steps=steps, log_interval=2, save_interval=3, keep_checkpoints=args.keep,
                     callbacks=[KillAt(kill_at)] if kill_at else [])
    loop.run()
    if dist_util.is_main():
        torch.save({n: p.module.state_dict() for n, p in loop.players.items()}, os.path.join(run_dir, "final.pt"))
    dist_util.cleanup()


if __name__ == "__main__":
    main()
