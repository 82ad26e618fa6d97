"""One method table: any set of exports scored on the same seeds, labels, reals and feature network.

    python scripts/compare.py --data_dir bundled:mnist --out_dir runs/compare \
        --row "teacher Heun 35=runs/t/exports/denoiser_ema0.999.pt@sampler=heun,steps=18,n=1000" \
        --row "stage 2=runs/s2/exports/generator_ema0.99.pt" \
        --row "stage 2 + bicubic=runs/s2/exports/generator_ema0.99.pt@upsample=32"

A row is LABEL=EXPORT[@key=value,...]; keys: sampler (heun|euler|stochastic) and steps for a teacher,
guidance_scale (the classifier-free guidance scale w; a guided teacher step costs 2 network calls and counts so in
NFE), n (samples per seed, default --num_samples), upsample (bicubic up-sampling of the row's samples to that size: the baseline stage 3 must beat).
The export's sidecar says whether it is a teacher or a one-step generator; another method adds a row by naming
its export. A distilled k-step denoiser (progressive distillation) samples Euler on its own grid at NFE k: sampler
and steps do not apply to its row.

Protocol (evaluations/protocol.py): the domain classifier of `--data_dir` (pagoda/domain.py, trained once
and cached) gives FD, KID, precision/recall and class fidelity; reals are the held-out split, cut into a reference
half and a floor half; seed k is the block of samples [k n, (k+1) n) with balanced labels; every score is mean +-
std over the seeds beside the real-vs-real floor at the same n, and a difference inside the spread is a tie. A
bicubic row also gets the floor of up-sampling: held-out reals at its base size up-sampled the same way.
Samples are kept under OUT_DIR/samples (resumable, shared by rows that sample the same export the same way);
writes compare.md, compare.json and compare.png (domain FD against NFE and against sampling time).
"""

import dataclasses
import hashlib
import json
import os
import re
import time

import numpy as np

from evaluations import protocol
from pagoda import checkpoint, logger, script_util
from pagoda.domain import cropped_images, domain_features, domain_scores, load_or_train
from pagoda.image_datasets import heldout_data_dir, open_source
from pagoda.image_util import resize_bicubic
from pagoda.sample_util import (assemble, claim_parts, model_identity, run_sampling, sampler_classes,
                                sampler_for_export)

F, _c = script_util.Flag, script_util
GROUPS = {
    "data": dict(
        data_dir=F("bundled:mnist", "the models' training data: its domain classifier (trained once and cached) "
                   "scores every row"),
        heldout_dir=F("", "labelled real images no compared model was trained on; '': the held-out split of a "
                      "bundled --data_dir"),
        split_seed=F(0, "seed of the cut of the held-out reals into a reference half and a floor half",
                     _c.at_least(0)),
        domain_epochs=F(0, "epochs of the domain classifier trained on --data_dir (cached per setting); 0 takes the "
                        "data's default (pagoda/domain.py: 2 for the digits, 6 for bundled:cifar10). Lower only for "
                        "smoke runs such as the recipes' --fast mode: a weaker classifier makes the domain columns "
                        "less telling", _c.at_least(0), resume="free"),
    ),
    "protocol": dict(
        num_samples=F(5000, "samples per seed of a row (a row's n=... overrides it)", _c.at_least(2)),
        num_seeds=F(3, "seeds (disjoint sample blocks) per row: the scores are mean +- std over them",
                    _c.at_least(1)),
        seed=F(0, "base seed of the samples (sample i uses seed + i) and of the KID subsets", _c.at_least(0)),
        kid_subsets=F(100, "random subsets KID is averaged over", _c.at_least(1)),
        kid_subset_size=F(1000, "images per KID subset", _c.at_least(2)),
        anchor=F("", "label of the row the others are compared with (better / worse / tie); '': the first row"),
        gap_row=F("", "label of a row whose FD gap to the anchor is reported against the largest spread; '': none"),
    ),
    "output": dict(
        out_dir=F("runs/compare", "folder of compare.md, compare.json, compare.png and samples/ (kept, resumable, "
                  "shared by rows that sample alike)"),
        batch_size=F(250, "samples per forward batch (the samples do not change)", _c.at_least(1)),
        chunk_size=F(500, "samples per part file (the unit a rerun resumes from)", _c.at_least(1)),
        device=F("cpu", "torch device the rows sample on (cpu, cuda, cuda:1, ...)"),
    ),
}

METRICS = [("fd", "domain FD", 2, True), ("kid", "domain KID", 3, True), ("precision", "precision", 3, False),
           ("recall", "recall", 3, False), ("class_fidelity", "class fidelity", 3, False)]


@dataclasses.dataclass
class Row:
    label: str
    path: str
    sampler: str = "heun"
    steps: int = 18
    guidance_scale: float = 1.0
    n: int = 0
    upsample: int = 0


def parse_row(text, default_n):
    """'LABEL=EXPORT[@key=value,...]' -> Row; unknown keys and malformed values are errors naming the row."""
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest:
        raise ValueError(f"--row {text!r}: expected LABEL=EXPORT[@key=value,...]")
    path, options = rest, ""
    if "@" in rest and "=" in rest.rsplit("@", 1)[1]:
        path, options = rest.rsplit("@", 1)
    fields = {f.name: f.type for f in dataclasses.fields(Row)}
    values = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in fields or key in ("label", "path"):
            renamed = " (renamed guidance_scale)" if key == "guidance" else ""
            raise ValueError(f"--row {label!r}: unknown option {key!r}{renamed}; known: sampler, steps, "
                             "guidance_scale, n, upsample")
        cast = fields[key]
        try:
            values[key] = cast(value)
        except ValueError:
            raise ValueError(f"--row {label!r}: {key}={value!r} is not a valid {cast.__name__}") from None
    row = Row(label=label.strip(), path=path, **values)
    row.n = row.n or default_n
    if row.n < 2 or row.steps < 1 or row.upsample < 0:
        raise ValueError(f"--row {label!r}: need n >= 2, steps >= 1 and upsample >= 0")
    if not os.path.isfile(row.path):
        raise FileNotFoundError(f"--row {label!r}: export {row.path} not found")
    return row


def sample_folder(out_dir, row):
    """Rows that sample one export the same way share a folder (a bicubic row reuses its base row's samples)."""
    key = json.dumps([os.path.abspath(row.path), row.sampler, row.steps, row.guidance_scale])
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(row.path))[0])
    return os.path.join(out_dir, "samples", f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}")


def draw_samples(row, total, args):
    """(images uint8 NHWC, labels, sampling record) of the first `total` samples of the row's export, made (or
    completed) in its sample folder. images_per_s is from the run that made them, kept across reruns."""
    folder = sample_folder(args.out_dir, row)
    sampler = sampler_for_export(row.path, device=args.device, sampler=row.sampler, num_steps=row.steps,
                                 guidance_scale=row.guidance_scale)
    identity = {**model_identity(row.path), "sampler": row.sampler, "num_steps": row.steps,
                "guidance_scale": row.guidance_scale, "labels": "balanced", "seed": args.seed,
                "chunk_size": args.chunk_size}
    claim_parts(folder, identity)

    def sample_fn(rng, y):
        return sampler(rng, y).float()

    made, seconds = run_sampling(sample_fn, out_dir=folder, num_samples=total, num_classes=sampler_classes(sampler),
                                 label_mode="balanced", base_seed=args.seed, chunk_size=args.chunk_size,
                                 batch_size=args.batch_size, device=args.device)
    path = assemble(folder, total, args.chunk_size)
    timing_path = os.path.join(folder, "timing.json")
    if made:
        checkpoint.atomic_write_text(json.dumps({"images_per_s": made / seconds, "made": made}), timing_path)
    with open(timing_path) as f:
        timing = json.load(f)
    with np.load(path) as data:
        images, labels = data["arr_0"], data["arr_1"]
    return images, labels, {"samples": path, "nfe": row_nfe(sampler, row), "images_per_s": timing["images_per_s"]}


def row_nfe(sampler, row):
    """Network calls per sample: a guided teacher step evaluates the conditional and the unconditional branch; a
    guidance-conditioned generator takes w as an input (one call)."""
    if getattr(sampler, "guidance_input", False):
        return sampler.nfe
    return sampler.nfe * (2 if row.guidance_scale != 1.0 else 1)


class Reals:
    """Domain features of the held-out reals at each resolution, cut once into reference and floor halves."""

    def __init__(self, model, source, *, split_seed):
        self.model, self.source = model, source
        self.reference, self.floor = protocol.reference_split(len(source), seed=split_seed)
        self._cache = {}

    def features(self, size):
        if size not in self._cache:
            images = cropped_images(self.source, size)
            feats, logits = domain_features(self.model, images)
            labels = np.asarray(self.source.labels)
            self._cache[size] = {part: (feats[idx], logits[idx], labels[idx])
                                 for part, idx in (("reference", self.reference), ("floor", self.floor))}
        return self._cache[size]

    def upsampled_floor_features(self, base, size):
        """Features, logits, labels of the floor half cropped at `base` px and up-sampled bicubically to `size`."""
        images = resize_bicubic(cropped_images(self.source, base, self.floor), size)
        feats, logits = domain_features(self.model, images)
        return feats, logits, np.asarray(self.source.labels)[self.floor]


def score_blocks(reals, size, feats, logits, labels, blocks, args):
    """Per-block domain scores against the reference half."""
    ref = reals.features(size)["reference"][0]
    return [domain_scores(ref, feats[b], logits[b], labels[b], kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size, seed=args.seed) for b in blocks]


def evaluate_row(row, reals, args):
    start = time.time()
    total = row.n * args.num_seeds
    images, labels, record = draw_samples(row, total, args)
    sampled = time.time() - start
    base = images.shape[1]
    if row.upsample:
        t = time.time()
        images = resize_bicubic(images, row.upsample)
        record["images_per_s"] = 1 / (1 / record["images_per_s"] + (time.time() - t) / len(images))
    size = images.shape[1]
    feats, logits = domain_features(reals.model, images)
    per_seed = score_blocks(reals, size, feats, logits, labels, protocol.seed_blocks(row.n, args.num_seeds), args)
    return {**dataclasses.asdict(row), **record, "resolution": size, "base_resolution": base, "per_seed": per_seed,
            "scores": protocol.aggregate(per_seed), "sample_seconds": sampled, "wall_seconds": time.time() - start}


def floor_scores(reals, size, n, args):
    """The real-vs-real floor at resolution `size` and n images: disjoint floor blocks against the reference;
    class fidelity of reals is the classifier's accuracy on them."""
    feats, logits, labels = reals.features(size)["floor"]
    blocks = protocol.floor_blocks(len(feats), n, args.num_seeds)
    per_seed = score_blocks(reals, size, feats, logits, labels, blocks, args)
    return {"resolution": size, "n": len(blocks[0]), "num_blocks": len(blocks), "per_seed": per_seed,
            "scores": protocol.aggregate(per_seed)}


def upsampled_floor_scores(reals, base, size, n, args):
    """The floor of a bicubic row: held-out reals at the row's `base` px up-sampled to `size`, against the `size`
    px reference, in the floor's blocks. It is what up-sampling costs with perfect content: the best any
    `base` px generator plus bicubic can score."""
    feats, logits, labels = reals.upsampled_floor_features(base, size)
    blocks = protocol.floor_blocks(len(feats), n, args.num_seeds)
    per_seed = score_blocks(reals, size, feats, logits, labels, blocks, args)
    return {"resolution": size, "upsampled_from": base, "n": len(blocks[0]), "num_blocks": len(blocks),
            "per_seed": per_seed, "scores": protocol.aggregate(per_seed)}


def verdicts(rows, anchor):
    """Each row's domain FD against the anchor row's: better / worse / tie (overlapping mean +- std)."""
    ref = next((r for r in rows if r["label"] == anchor), rows[0])
    a = ref["scores"]["fd"]
    for r in rows:
        s = r["scores"]["fd"]
        r["vs_anchor"] = "anchor" if r is ref else protocol.compare(s["mean"], s["std"], a["mean"], a["std"])
    return ref["label"]


def _cell(scores, key, digits):
    s = scores.get(key)
    if s is None:
        return "n/a"
    return protocol.format_score(s["mean"], s["std"], digits)


def markdown(result):
    p = result["protocol"]
    lines = ["# Method table", "",
             f"Domain classifier: {p['classifier']['path']} (trained on {p['data_dir']}, held-out accuracy "
             f"{p['classifier']['heldout_accuracy']:.4f} on {p['classifier']['heldout']}). Reals: {p['heldout_dir']}, "
             f"{p['num_reference']} reference / {p['num_floor']} floor images (seeded split {p['split_seed']}). "
             f"Each score: mean +- std (ddof 1) over {p['num_seeds']} seeds of n samples (balanced labels); KID "
             f"over {p['kid_subsets']} subsets of up to {p['kid_subset_size']}. 'vs {result['anchor']}': domain FD, "
             "a tie when the mean +- std intervals overlap.", "",
             "| row | res | NFE | n/seed | " + " | ".join(m[1] for m in METRICS) +
             f" | images/s | vs {result['anchor']} | wall s |",
             "|" + "---|" * (len(METRICS) + 7)]
    for r in result["rows"]:
        cells = [_cell(r["scores"], key, d) for key, _, d, _ in METRICS]
        lines.append(f"| {r['label']} | {r['resolution']} px | {r['nfe']} | {r['n']} | " + " | ".join(cells) +
                     f" | {r['images_per_s']:.1f} | {r['vs_anchor']} | {r['wall_seconds']:.0f} |")
    for f in result["floors"] + result["upsampled_floors"]:
        cells = [_cell(f["scores"], key, d) for key, _, d, _ in METRICS]
        what = f"real {f['upsampled_from']} px + bicubic" if f.get("upsampled_from") else "real vs real"
        lines.append(f"| {what} (floor, {f['num_blocks']} block{'s' * (f['num_blocks'] > 1)}) | "
                     f"{f['resolution']} px | - | {f['n']} | " + " | ".join(cells) + " | - | - | - |")
    lines += ["", "Class fidelity of the floor rows is the classifier's accuracy on real held-out images."]
    if result["upsampled_floors"]:
        lines += ["A 'real N px + bicubic' floor scores held-out reals cut to N px and up-sampled bicubically: what "
                  "the up-sampling alone costs, the best a bicubic row from N px can reach."]
    if result.get("gap"):
        g = result["gap"]
        lines += ["", f"Resolution check: the largest domain-FD spread over rows is {g['max_std']:.3f}, "
                  f"{g['ratio']:.3f} of the gap between '{g['a']}' and '{g['b']}' ({g['gap']:.2f})."]
    lines += ["", f"Total wall time: {result['wall_seconds']:.0f} s. Figure: compare.png."]
    return "\n".join(lines) + "\n"


def resolution_gap(rows, anchor, gap_row):
    if not gap_row:
        return None
    by_label = {r["label"]: r for r in rows}
    if gap_row not in by_label:
        raise ValueError(f"--gap_row {gap_row!r} names no row; rows: {sorted(by_label)}")
    a, b = by_label[anchor]["scores"]["fd"], by_label[gap_row]["scores"]["fd"]
    max_std = max(r["scores"]["fd"]["std"] or 0.0 for r in rows)
    gap = abs(a["mean"] - b["mean"])
    return {"a": anchor, "b": gap_row, "gap": gap, "max_std": max_std, "ratio": max_std / gap if gap else None}


def classifier_summary(model):
    record = model.record
    return {"path": model.path, "heldout_accuracy": record["accuracy"],
            "heldout": record["heldout"].get("data_dir", record["heldout"].get("kind")), "record": record}


def create_parser():
    parser = script_util.create_parser(GROUPS, description=__doc__)
    parser.add_argument("--row", action="append", default=[], help="LABEL=EXPORT[@key=value,...] (repeatable)")
    return parser


def main(argv=None):
    parser = create_parser()
    args = script_util.parse_args(parser, None, argv)
    script_util.handle_dry_run(args)
    script_util.resolve_paths(args)
    if not args.row:
        parser.error("give at least one --row LABEL=EXPORT[@options]")
    rows = [parse_row(text, args.num_samples) for text in args.row]
    heldout = args.heldout_dir or heldout_data_dir(args.data_dir)
    if not heldout:
        parser.error(f"{args.data_dir} has no bundled held-out split: pass --heldout_dir (labelled images never "
                     "used to train any model being compared)")
    start = time.time()
    logger.configure(args.out_dir)
    model = load_or_train(args.data_dir, heldout_dir=heldout,
                          **({"epochs": args.domain_epochs} if args.domain_epochs else {}))
    reals = Reals(model, open_source(heldout), split_seed=args.split_seed)
    results = []
    for row in rows:
        logger.log(f"row {row.label!r}: {row.n} x {args.num_seeds} samples from {row.path}")
        results.append(evaluate_row(row, reals, args))
    floors = [floor_scores(reals, size, n, args) for size, n in sorted({(r["resolution"], r["n"]) for r in results})]
    upsampled = sorted({(r["base_resolution"], r["resolution"], r["n"]) for r in results if r["upsample"]})
    upsampled_floors = [upsampled_floor_scores(reals, base, size, n, args) for base, size, n in upsampled]
    anchor = verdicts(results, args.anchor or results[0]["label"])
    result = {"protocol": {**script_util.resolved_config(args), "heldout_dir": heldout,
                           "num_reference": len(reals.reference), "num_floor": len(reals.floor),
                           "classifier": classifier_summary(model), "git_commit": script_util.git_commit()},
              "rows": results, "floors": floors, "upsampled_floors": upsampled_floors, "anchor": anchor,
              "gap": resolution_gap(results, anchor, args.gap_row), "wall_seconds": time.time() - start}
    text = markdown(result)
    checkpoint.atomic_write_text(text, os.path.join(args.out_dir, "compare.md"))
    checkpoint.atomic_write_text(json.dumps(result, indent=1, default=str), os.path.join(args.out_dir, "compare.json"))
    from compare_figure import write_figure  # matplotlib loads only to draw: --help and --dry_run stay quick

    write_figure(result, os.path.join(args.out_dir, "compare.png"))
    print(text)
    return result


if __name__ == "__main__":
    main()
