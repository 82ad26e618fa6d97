"""Where a bundled training step's time goes: the teacher, stage-2 and stage-3 recipes run in this process for a few
steps under torch.profiler, split by the training loop's own spans (data, forward_backward, optimizer, ema, log)
and by operator family (convolution, normalisation, matmul/attention, elementwise, optimizer kernels, ...).

    python bench/profile_steps.py --run runs/quickstart [--stages teacher,stage2,stage3] [--steps 20]

Takes the teacher export, latents and stage-2 generator of a finished quickstart run. Each recipe is read from
its bash file (`--dry_run`), so the profile is of exactly what the quickstart runs. Previews, monitor metrics and
checkpoints fire once inside the profiled window; their cost per step is that time over the recipe's interval.
Spans are shares of the step's wall time; operator families are shares of the summed operator self time (with
the profiler's per-operator cost that sum can exceed the step, so it is not split against the wall time).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

from torch.profiler import ProfilerActivity, profile, schedule

from common import cpu_banner
from pagoda import logger, methods
from pagoda.train_util import TrainLoop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPANS = ("data", "forward_backward", "optimizer", "ema", "log")
ONCE = {"callbacks": ("preview_interval", "monitor_interval"), "checkpoint": ("save_interval",)}
FAMILIES = (  # first match wins; matched against the lower-cased operator name
    ("convolution", ("conv",)),
    ("normalisation", ("group_norm", "batch_norm", "layer_norm", "native_norm")),
    ("matmul / attention", ("mm", "matmul", "linear", "softmax", "einsum", "attention")),
    ("optimizer kernels", ("_foreach", "lerp", "addcdiv", "addcmul")),
    ("resampling", ("upsample", "pool", "interpolate", "grid_sampler")),
    ("copies / layout", ("copy", "clone", "contiguous", "to", "cat", "stack", "pad", "index", "empty", "zero", "fill")),
    ("elementwise / other ops", ("",)),
)
RECIPES = {"teacher": ("stage1_teacher_mnist.sh", "diffusion"), "stage2": ("stage2_mnist.sh", "pagoda"),
           "stage3": ("stage3_mnist.sh", "pagoda")}


def train_script():
    """scripts/train.py as a module, loaded by its path: it is an entry point in another folder, not a package."""
    spec = importlib.util.spec_from_file_location("train", os.path.join(REPO, "scripts", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_config(recipe, env):
    out = subprocess.run(["bash", os.path.join(REPO, "commands", recipe), "--dry_run"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHON=sys.executable, **env), check=True)
    return json.loads(out.stdout)


def config_argv(config, spec):
    """The flags of `config` (a dry run's resolved config) as argv; records such as git_commit are left out."""
    flags = set().union(*(group.keys() for group in spec.GROUPS.values())) - {"preset"}
    argv = []
    for key, value in config.items():
        if key not in flags or value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        argv += [f"--{key}", str(value)]
    return argv


def family(op):
    name = op.lower()
    return next(label for label, keys in FAMILIES if any(k in name for k in keys))


def profile_stage(stage, env, *, steps, warmup):
    """(recipe config, per-step ms by span, per-step ms by operator family, wall ms per step, once-costs in ms)."""
    recipe, method = RECIPES[stage]
    config = recipe_config(recipe, env)
    spec = methods.get(method)
    middle = warmup + steps // 2  # previews, metrics and the checkpoint fire once here, inside the window
    overrides = dict(total_steps=warmup + steps, log_interval=warmup + steps, save_interval=middle,
                     preview_interval=middle, keep_checkpoints=1)
    if config.get("monitor_interval"):
        overrides["monitor_interval"] = middle
    with tempfile.TemporaryDirectory() as run_dir:
        argv = config_argv(dict(config, **overrides, run_dir=run_dir), spec)
        original = TrainLoop.run_step
        captured, marks = [], []  # the active window's events, taken when its trace is ready; step end times
        with profile(activities=[ProfilerActivity.CPU], on_trace_ready=lambda p: captured.append(p.key_averages()),
                     schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1)) as prof:
            def run_step(loop):
                original(loop)
                marks.append(time.perf_counter())  # end of step len(marks)
                prof.step()
            TrainLoop.run_step = run_step
            try:
                train_script().main(argv, method=method)
            finally:
                TrainLoop.run_step = original
                logger.configure(None)
    events = captured[0]
    spans = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key in SPANS}
    once = {k: sum(e.cpu_time_total for e in events if e.key == k) / 1e3 for k in ONCE}
    families = {}
    for e in events:
        if e.key in SPANS or e.key in ONCE or e.key.startswith("ProfilerStep") or not e.key.startswith("aten::"):
            continue
        families[family(e.key)] = families.get(family(e.key), 0.0) + e.self_cpu_time_total / 1e3 / steps
    wall = (marks[warmup + steps - 1] - marks[warmup - 1]) * 1e3 / steps  # steps warmup+1 .. warmup+steps
    return config, spans, families, wall - sum(once.values()) / steps, once


def report(stage, config, spans, families, wall, once):
    print(f"\n== {stage}: {wall:.1f} ms per step (profiled, callbacks and checkpoint excluded) ==")
    for name in SPANS:
        ms = spans.get(name, 0.0)
        print(f"  span   {name:<26} {ms:8.1f} ms  {100 * ms / wall:5.1f}%")
    ops = sum(families.values())  # self times; with the profiler's own cost they can add up to more than the step
    for name, ms in sorted(families.items(), key=lambda kv: -kv[1]):
        print(f"  ops    {name:<26} {ms:8.1f} ms  {100 * ms / ops:5.1f}% of operator time")
    for name, keys in ONCE.items():
        intervals = [config[k] for k in keys if config.get(k)]
        if intervals:
            per_step = once[name] / min(intervals)
            print(f"  once   {name:<26} {once[name]:8.1f} ms per firing, every {min(intervals)} steps in the "
                  f"recipe: {per_step:.1f} ms/step ({100 * per_step / wall:.1f}%)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="a finished quickstart run directory")
    parser.add_argument("--stages", default="teacher,stage2,stage3")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps per stage")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled steps first (at least 1)")
    args = parser.parse_args()
    env = {"TEACHER": os.path.join(args.run, "teacher", "exports", "denoiser_ema0.999.pt"),
           "LATENTS": os.path.join(args.run, "latents"),
           "GENERATOR": os.path.join(args.run, "stage2", "exports", "generator_ema0.99.pt")}
    missing = [p for p in env.values() if not os.path.exists(p)]
    if missing:
        sys.exit(f"error: {args.run} is not a finished quickstart run (missing {', '.join(missing)}); "
                 "run bash commands/quickstart.sh first or pass --run")
    print(cpu_banner("cpu"), flush=True)
    for stage in [s for s in args.stages.split(",") if s]:
        if stage not in RECIPES:
            sys.exit(f"error: unknown stage {stage!r}; choose from {sorted(RECIPES)}")
        report(stage, *profile_stage(stage, env, steps=args.steps, warmup=args.warmup))


if __name__ == "__main__":
    main()
