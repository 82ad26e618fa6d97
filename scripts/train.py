"""Train any method in the one training loop: the teacher (stage 1), PaGoDA (stages 2 and 3), the baselines.

    python scripts/train.py --method diffusion --preset mnist16 --run_dir runs/teacher
    python scripts/train.py --method pagoda --preset mnist16 --init_from runs/teacher/exports/denoiser_ema0.999.pt \
        --latent_dir runs/latents --run_dir runs/stage2
    mpiexec -n 8 python scripts/train.py --method pagoda --preset imagenet64 ...

`python scripts/train.py --method NAME --help` lists the method's flags and presets (pagoda/methods/NAME.py).
Rerunning the same command resumes from the latest training state in --run_dir; exports go to <run_dir>/exports.
"""

import argparse
import os
import sys

from pagoda import dist_util, logger, methods, random_util, script_util
from pagoda.amp import resolve_precision
from pagoda.methods import common
from pagoda.train_util import TrainLoop


def method_name(argv):
    """--method NAME from argv (the flags that follow depend on it)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", choices=methods.METHODS)
    known, _ = pre.parse_known_args(argv)
    if known.method is None:
        pre.error(f"--method is required: one of {', '.join(methods.METHODS)}")
    return known.method


def parser_for(name):
    """The argument parser of method `name` (its flag groups, presets and constraints, plus --method)."""
    spec = methods.get(name)
    doc = f"{__doc__}\n--method {name}: {spec.__doc__}"
    parser = script_util.create_parser(spec.GROUPS, description=doc, presets=spec.PRESETS,
                                       constraints=spec.CONSTRAINTS)
    parser.add_argument("--method", choices=methods.METHODS, default=name, help="the training method")
    return parser


def main(argv=None, *, method=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    name = method or method_name(argv)
    spec = methods.get(name)
    parser = parser_for(name)
    args = script_util.parse_args(parser, spec.PRESETS, argv)
    if args.method != name:
        parser.error(f"--method {args.method} given to the {name} entry point")
    script_util.handle_dry_run(args)
    script_util.resolve_paths(args)
    with script_util.locked_job(args.run_dir, "run directory", log_formats=args.log_format) as device:
        train(args, spec, parser, device)
    dist_util.cleanup()


def train(args, spec, parser, device):
    """Build, check, then record: config.json is written only after the settings (check_config), the data and the
    model (build, and TrainLoop's resume) have passed their checks, so a refused command leaves the run as it was."""
    random_util.seed_all(args.seed, "run", dist_util.get_rank())
    args.precision = resolve_precision(args.precision, device, log=logger.log)
    run = spec.build(script_util.args_to_dict(args, vars(args)), device)
    classes = {**parser.resume_classes, "method": "fixed", **common.RECORD_CLASSES}
    checked = script_util.check_config(args.run_dir, args, classes=classes, allow_change=args.allow_config_change,
                                       **run.record, **anneal_record(run.optim))
    loop = TrainLoop(objective=run.objective, data=run.data, run_dir=args.run_dir,
                     global_batch_size=args.global_batch_size, microbatch=args.microbatch, optim=run.optim,
                     precision=args.precision, total_steps=args.total_steps, log_interval=args.log_interval,
                     save_interval=args.save_interval, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                     callbacks=run.callbacks, config=checked.config, title=run.title, compile=args.compile)
    checked.check_state_record(loop.recorded_config, allow_change=args.allow_config_change)
    checked.write()
    loop.run()
    if run.finish is not None:
        run.finish()
    loop.verify_exports()
    logger.log(f"done: exports in {os.path.join(args.run_dir, 'exports')}")


def anneal_record(optim):
    """The learning-rate anneal's length of each player that has one, recorded with the run when it is created: a
    resume with another length (an extended --total_steps) is a guarded change, refused unless allowed."""
    lengths = {f"{name}_steps": spec.decay_steps for name, spec in optim.items() if spec.decay_steps}
    return {"lr_anneal": lengths} if lengths else {}


if __name__ == "__main__":
    main()
