"""The classifier-free guidance trade-off curve from a method table (scripts/compare.py's compare.json):

    python scripts/guidance_curve.py --compare runs/quickstart/guided/curve/compare.json

The table's rows are grouped into models by export (a teacher row per w, a generator row per w; the model's name is
the row label up to its '_w' suffix) and ordered by their `guidance_scale`. Written next to compare.json:
  guidance.png   domain FD, precision, recall and class fidelity against w, one line per model (mean +- std over
                 seeds), the real-vs-real floor dashed;
  guidance.md    the same as a table, the rank correlation (Spearman) of each score with w for each model, and for
                 each model after the first (the reference, e.g. the teacher) whether it is within the spread of the
                 reference at each w (mean +- std intervals overlap: evaluations/protocol.compare's tie);
  guidance.json  all of it;
  guidance_samples.png  the first 12 samples of every row, one image row per (model, w) in the table's order: every
                 row draws the same seeds (the same z and labels), so a column is one latent across the models and w.
"""

import json
import os

import numpy as np

from evaluations import protocol
from pagoda import checkpoint, script_util
from pagoda.image_util import save_grid

METRICS = [("fd", "domain FD", 2), ("precision", "precision", 3), ("recall", "recall", 3),
           ("class_fidelity", "class fidelity", 3)]


def model_name(label):
    return label.rsplit("_w", 1)[0] if "_w" in label else label


def curves(result):
    """[{name, path, points: [{w, label, scores}]}] in the table's order, each model's points ordered by w."""
    models = {}
    for row in result["rows"]:
        if "guidance_scale" not in row:
            raise ValueError(f"row {row['label']!r} has no guidance_scale (a compare.json from before the row option "
                             "was renamed from guidance): rerun scripts/compare.py, which reuses its samples")
        key = (row["path"], row.get("sampler"), row.get("steps"), row.get("upsample", 0))
        model = models.setdefault(key, {"name": model_name(row["label"]), "path": row["path"], "points": []})
        model["points"].append({"w": float(row["guidance_scale"]), "label": row["label"], "n": row["n"],
                                "scores": row["scores"], "samples": row.get("samples")})
    for model in models.values():
        model["points"].sort(key=lambda p: p["w"])
        ws = [p["w"] for p in model["points"]]
        if len(set(ws)) != len(ws):
            raise ValueError(f"model {model['name']!r} ({model['path']}) has two rows at one w: {ws}")
    return list(models.values())


def ranks(values):
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y):
    """Spearman's rank correlation (Pearson on average ranks); None with fewer than 2 points or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def floor_scores(result, models):
    """The real-vs-real floor at the curve's resolution and largest n (the one its rows are compared with)."""
    n = max(p["n"] for m in models for p in m["points"])
    floors = sorted(result.get("floors", []), key=lambda f: (f["n"] == n, f["n"]))
    return floors[-1]["scores"] if floors else None


def summarise(result):
    models = curves(result)
    reference = models[0]
    summary = {"models": models, "floor": floor_scores(result, models), "reference": reference["name"]}
    for model in models:
        ws = [p["w"] for p in model["points"]]
        model["spearman"] = {key: spearman(ws, [p["scores"][key]["mean"] for p in model["points"]])
                             for key, _, _ in METRICS}
        if model is reference:
            continue
        ref = {p["w"]: p["scores"] for p in reference["points"]}
        model["vs_reference"] = {
            key: {str(p["w"]): protocol.compare(p["scores"][key]["mean"], p["scores"][key]["std"],
                                                ref[p["w"]][key]["mean"], ref[p["w"]][key]["std"],
                                                lower_is_better=key == "fd")
                  for p in model["points"] if p["w"] in ref} for key, _, _ in METRICS}
        model["within_spread_everywhere"] = {key: all(v == "tie" for v in verdict.values())
                                             for key, verdict in model["vs_reference"].items()}
    return summary


def _fmt(value):
    return "n/a" if value is None else f"{value:+.2f}"


def markdown(summary, result):
    p = result.get("protocol", {})
    models = summary["models"]
    lines = ["# Classifier-free guidance: the trade-off curve", "",
             f"From compare.json (scripts/compare.py): {p.get('num_seeds', '?')} seeds of n samples per row, balanced "
             "labels, domain scores against the held-out reals. Mean +- std over seeds.", ""]
    ws = sorted({pt["w"] for m in models for pt in m["points"]})
    header = "| w | " + " | ".join(f"{m['name']} {title}" for key, title, _ in METRICS for m in models) + " |"
    lines += [header, "|" + "---|" * (1 + len(METRICS) * len(models))]
    for w in ws:
        cells = []
        for key, _, digits in METRICS:
            for m in models:
                pt = next((pt for pt in m["points"] if pt["w"] == w), None)
                s = pt["scores"].get(key) if pt else None
                cells.append("-" if s is None else protocol.format_score(s["mean"], s["std"], digits))
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    if summary["floor"]:
        f = summary["floor"]
        lines += ["", "Real vs real (floor): " + ", ".join(
            f"{title} {protocol.format_score(f[key]['mean'], f[key]['std'], d)}" for key, title, d in METRICS)]
    lines += ["", "Rank correlation (Spearman) of each score with w:", "",
              "| model | " + " | ".join(title for _, title, _ in METRICS) + " |", "|" + "---|" * (1 + len(METRICS))]
    for m in models:
        lines.append(f"| {m['name']} | " + " | ".join(_fmt(m["spearman"][key]) for key, _, _ in METRICS) + " |")
    for m in models[1:]:
        lines += ["", f"{m['name']} against {summary['reference']} at each w (tie: within the spread, mean +- std "
                  "intervals overlap):", "", "| score | " + " | ".join(f"w={w:g}" for w in ws) + " | all ties |",
                  "|" + "---|" * (2 + len(ws))]
        for key, title, _ in METRICS:
            verdict = m["vs_reference"][key]
            lines.append(f"| {title} | " + " | ".join(verdict.get(str(w), "-") for w in ws) +
                         f" | {'yes' if m['within_spread_everywhere'][key] else 'no'} |")
    lines += ["", "Figures: guidance.png (the scores against w), guidance_samples.png (the first 12 samples of each "
              "row, one grid row per model and w in the table's order; the same seeds in every row)."]
    return "\n".join(lines) + "\n"


def write_figure(summary, path):
    from compare_figure import COLOURS, write_curve_figure  # matplotlib loads only to draw

    floor = summary["floor"]
    panels = []
    for key, title, _ in METRICS:
        series = [(m["name"], COLOURS[i % len(COLOURS)],
                   [(p["w"], p["scores"][key]["mean"], p["scores"][key]["std"]) for p in m["points"]])
                  for i, m in enumerate(summary["models"])]
        panels.append((f"{title} (mean +- std over seeds) vs w", series,
                       floor[key]["mean"] if floor and key in floor else None))
    write_curve_figure(panels, path, xlabel="classifier-free guidance scale w")


def write_sample_grid(summary, path, *, per_row=12):
    """The first `per_row` samples of every (model, w) row, one grid row each; False (nothing written) when a row's
    samples file is not there (a table moved away from its samples)."""
    tiles = []
    for model in summary["models"]:
        for point in model["points"]:
            if not point.get("samples") or not os.path.exists(point["samples"]):
                return False
            with np.load(point["samples"]) as f:
                tiles.append(f["arr_0"][:per_row])
    save_grid(np.concatenate(tiles), path, ncols=per_row, scale=4)
    return True


GROUPS = {"main": dict(
    compare=script_util.Flag("", "compare.json of a method table with one row per (model, w) (scripts/compare.py); "
                             "required"),
    out_dir=script_util.Flag("", "where to write guidance.{png,md,json} and guidance_samples.png; '': beside "
                             "--compare"),
)}


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__,
                                    required={"compare": "the method table's compare.json"})
    with open(args.compare) as f:
        result = json.load(f)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.compare))
    summary = summarise(result)
    text = markdown(summary, result)
    checkpoint.atomic_write_text(text, os.path.join(out_dir, "guidance.md"))
    checkpoint.atomic_write_text(json.dumps(summary, indent=1, default=str), os.path.join(out_dir, "guidance.json"))
    write_figure(summary, os.path.join(out_dir, "guidance.png"))
    if not write_sample_grid(summary, os.path.join(out_dir, "guidance_samples.png")):
        print("guidance_samples.png not written: a row's samples file is missing")
    print(text)
    return summary


if __name__ == "__main__":
    main()
