"""Is a run's adversarial term working? Read from its progress.csv, against the targets of issue 32:

- the discriminator's batch accuracy (gan.discriminator_diagnostics: 0.5 is chance) averaged over the log intervals
  of the second half of training must reach `min_accuracy` (0.75): an inert D (~0.5) gives the generator nothing;
- the adaptive weight may sit at its clamp (gan.ADAPTIVE_CLIP) in at most `max_clamp` (0.10) of the generator steps:
  at the upper end the GAN gradient is too weak to balance the reconstruction's, at the lower end too strong.

    python -m evaluations.gan_health runs/quickstart/stage2 runs/quickstart/stage3

Each log row is the mean over its interval's steps (pagoda.logger), so the accuracy column is the mean over that
interval's D steps and the clamp column the fraction of its generator steps at the clamp; rows are weighted by the
steps they cover. The keys a --separate_update run logs under its GAN phase ("generator_gan") are read too.
"""

import argparse
import csv
import json
import os

ACCURACY_KEY = "loss/discriminator/accuracy"
CLAMP_KEYS = ("loss/generator/adaptive_at_clamp", "loss/generator_gan/adaptive_at_clamp")
MIN_ACCURACY, MAX_CLAMP = 0.75, 0.10


def _column(rows, keys):
    """[(step, steps covered, value)] of the first of `keys` each row has (rows without any are skipped)."""
    out, previous = [], 0
    for row in rows:
        step = int(float(row["step"]))
        value = next((row[k] for k in keys if row.get(k) not in (None, "")), None)
        if value is not None:
            out.append((step, step - previous, float(value)))
        previous = step
    return out


def _weighted_mean(points):
    total = sum(n for _, n, _ in points)
    return sum(n * v for _, n, v in points) / total if total else None


def summarise(progress_csv, *, min_accuracy=MIN_ACCURACY, max_clamp=MAX_CLAMP):
    """The two curves (step, value) and their summaries: D's accuracy over the second half of the logged steps
    (intervals ending after half the last step), the fraction of generator steps at the clamp over the whole run,
    and whether each meets its target. Raises ValueError when the file has no discriminator accuracy."""
    with open(progress_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    accuracy, clamp = _column(rows, (ACCURACY_KEY,)), _column(rows, CLAMP_KEYS)
    if not accuracy:
        raise ValueError(f"{progress_csv} logs no {ACCURACY_KEY}: not an adversarial run, or no log interval yet")
    last = accuracy[-1][0]
    second_half = [p for p in accuracy if p[0] > last / 2]
    acc, rate = _weighted_mean(second_half), _weighted_mean(clamp)
    return {"accuracy_curve": [(s, v) for s, _, v in accuracy], "clamp_curve": [(s, v) for s, _, v in clamp],
            "accuracy_second_half": acc, "clamp_rate": rate, "last_step": last,
            "accuracy_ok": acc >= min_accuracy, "clamp_ok": rate is not None and rate <= max_clamp}


def describe(name, summary):
    """One line per run, with both curves."""
    curve = lambda pts: " ".join(f"{v:.2f}" for _, v in pts)  # noqa: E731
    rate = "n/a" if summary["clamp_rate"] is None else f"{summary['clamp_rate']:.1%}"
    acc_note = "ok" if summary["accuracy_ok"] else f"below {MIN_ACCURACY:.2f}"
    clamp_note = "ok" if summary["clamp_ok"] else f"over {MAX_CLAMP:.0%}"
    return (f"{name}: D accuracy over the second half {summary['accuracy_second_half']:.3f} ({acc_note}), adaptive "
            f"weight at its clamp in {rate} of generator steps ({clamp_note})"
            f"\n  accuracy by interval: {curve(summary['accuracy_curve'])}"
            f"\n  clamp rate by interval: {curve(summary['clamp_curve'])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="training run folders (each with its progress.csv)")
    parser.add_argument("--json", default="", help="also write every summary to this JSON file")
    args = parser.parse_args(argv)
    results = {}
    for run_dir in args.run_dirs:
        path = os.path.join(run_dir, "progress.csv")
        if not os.path.exists(path):
            parser.error(f"{path} not found: give a training run folder")
        results[run_dir] = summarise(path)
        print(describe(run_dir, results[run_dir]))
    if args.json:
        temporary = f"{args.json}.tmp{os.getpid()}"
        with open(temporary, "w") as f:  # evaluations/ stands alone: its own atomic write
            f.write(json.dumps(results, indent=1))
        os.replace(temporary, args.json)
    return results


if __name__ == "__main__":
    main()
