"""The method table's figure: domain FD (mean +- std over seeds, log scale) against NFE and against sampling time
(log scale), with the real-vs-real floor of each resolution as a dashed line. Drawn with Pillow (no plotting dependency)."""

import math

from PIL import Image, ImageDraw

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
PANEL = (520, 380)
MARGIN = dict(left=58, right=16, top=28, bottom=44)


def _log_ticks(lo, hi):
    return [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def _panel(points, floors, *, title, xlabel):
    """points: [(label, x, mean, std, colour)]; floors: [(label, mean)] drawn as dashed lines."""
    w, h = PANEL
    img = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN["left"], MARGIN["top"], w - MARGIN["right"], h - MARGIN["bottom"]
    xs = [p[1] for p in points]
    ys = [p[2] + (p[3] or 0) for p in points] + [p[2] - (p[3] or 0) for p in points]
    ys += [mean for _, mean in floors]
    x0, x1 = math.log10(min(xs)) - 0.15, math.log10(max(xs)) + 0.6  # room for the labels right of the points
    # log y as well: scores span the floor (~1) to broken samplers (hundreds)
    y0, y1 = math.log10(max(min(ys), 1e-3)) - 0.1, math.log10(max(max(ys), 1e-3)) + 0.1

    def at(x, y):
        return (left + (math.log10(x) - x0) / (x1 - x0) * (right - left),
                bottom - (math.log10(max(y, 1e-3)) - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline="black")
    for tick in _log_ticks(10 ** x0, 10 ** x1):
        if 10 ** x0 <= tick <= 10 ** x1:
            x, _ = at(tick, y0)
            draw.line([(x, bottom), (x, bottom + 4)], fill="black")
            draw.text((x - 10, bottom + 6), f"{tick:g}", fill="black")
    for k in range(5):
        y_value = 10 ** (y0 + (y1 - y0) * k / 4)
        _, y = at(10 ** x0, y_value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{y_value:.3g}", fill="black")
    for k, (label, mean) in enumerate(floors):  # labels staggered along x: floors often lie close together
        _, y = at(10 ** x0, mean)
        for x in range(left, right, 10):
            draw.line([(x, y), (min(x + 5, right), y)], fill="#555555")
        draw.text((left + 8 + k * (right - left) // 2, y + 2), label, fill="#555555")
    for label, x_value, mean, std, colour in points:
        x, y = at(x_value, mean)
        if std:
            _, y_hi = at(x_value, mean + std)
            _, y_lo = at(x_value, mean - std)
            draw.line([(x, y_hi), (x, y_lo)], fill=colour, width=2)
            draw.line([(x - 4, y_hi), (x + 4, y_hi)], fill=colour)
            draw.line([(x - 4, y_lo), (x + 4, y_lo)], fill=colour)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((x + 6, y - 12), label, fill=colour)
    draw.text((left, 8), title, fill="black")
    draw.text(((left + right) / 2 - 60, h - 18), xlabel, fill="black")
    return img


def write_figure(result, path):
    """Two panels side by side: domain FD vs NFE, and vs seconds per 1000 samples."""
    rows = result["rows"]
    colours = {r["label"]: COLOURS[i % len(COLOURS)] for i, r in enumerate(rows)}
    largest = {}  # the floor at each resolution's largest n: the one most rows are compared with
    for f in result["floors"]:
        if f["n"] >= largest.get(f["resolution"], {"n": 0})["n"]:
            largest[f["resolution"]] = f
    floors = [(f"real vs real, {size} px (floor)", f["scores"]["fd"]["mean"]) for size, f in sorted(largest.items())]

    def points(x_of):
        return [(r["label"], x_of(r), r["scores"]["fd"]["mean"], r["scores"]["fd"]["std"], colours[r["label"]])
                for r in rows]

    left = _panel(points(lambda r: r["nfe"]), floors, title="domain FD (mean +- std over seeds, log) vs NFE",
                  xlabel="network evaluations per sample (log)")
    right = _panel(points(lambda r: 1000.0 / r["images_per_s"]), floors, title="domain FD vs sampling time",
                   xlabel="seconds per 1000 samples (log)")
    out = Image.new("RGB", (PANEL[0] * 2, PANEL[1]), "white")
    out.paste(left, (0, 0))
    out.paste(right, (PANEL[0], 0))
    out.save(path)


def _linear_panel(series, floor, *, title, xlabel):
    """series: [(name, colour, [(x, mean, std)])] drawn as lines with error bars; floor: a value drawn dashed, or
    None. Linear axes: a curve over a few settings (a guidance scale) rather than a cost spanning decades."""
    w, h = PANEL
    img = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN["left"], MARGIN["top"], w - MARGIN["right"], h - MARGIN["bottom"]
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] + s * (p[2] or 0) for _, _, pts in series for p in pts for s in (-1, 1)]
    ys += [floor] if floor is not None else []
    x0, x1 = min(xs), max(xs)
    pad_x = 0.08 * ((x1 - x0) or 1.0)
    x0, x1 = x0 - pad_x, x1 + pad_x
    pad_y = 0.08 * ((max(ys) - min(ys)) or 1.0)
    y0, y1 = min(ys) - pad_y, max(ys) + pad_y

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline="black")
    for tick in sorted(set(xs)):
        x, _ = at(tick, y0)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 8, bottom + 6), f"{tick:g}", fill="black")
    for k in range(5):
        y_value = y0 + (y1 - y0) * k / 4
        _, y = at(x0, y_value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{y_value:.3g}", fill="black")
    if floor is not None:
        _, y = at(x0, floor)
        for x in range(left, right, 10):
            draw.line([(x, y), (min(x + 5, right), y)], fill="#555555")
        draw.text((left + 8, y + 2), "real vs real (floor)", fill="#555555")
    for k, (name, colour, pts) in enumerate(series):
        pts = sorted(pts)
        draw.line([at(x, m) for x, m, _ in pts], fill=colour, width=2)
        for x_value, mean, std in pts:
            x, y = at(x_value, mean)
            if std:
                (_, y_hi), (_, y_lo) = at(x_value, mean + std), at(x_value, mean - std)
                draw.line([(x, y_hi), (x, y_lo)], fill=colour, width=2)
                draw.line([(x - 4, y_hi), (x + 4, y_hi)], fill=colour)
                draw.line([(x - 4, y_lo), (x + 4, y_lo)], fill=colour)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right - 150, top + 6 + 14 * k), f"-- {name}", fill=colour)  # legend, top right
    draw.text((left, 8), title, fill="black")
    draw.text(((left + right) / 2 - 60, h - 18), xlabel, fill="black")
    return img


def write_curve_figure(panels, path, *, xlabel, columns=2):
    """Linear panels on a grid, `columns` wide: panels = [(title, series, floor)] as _linear_panel takes them."""
    rows = -(-len(panels) // columns)
    out = Image.new("RGB", (PANEL[0] * min(columns, len(panels)), PANEL[1] * rows), "white")
    for i, (title, series, floor) in enumerate(panels):
        out.paste(_linear_panel(series, floor, title=title, xlabel=xlabel),
                  ((i % columns) * PANEL[0], (i // columns) * PANEL[1]))
    out.save(path)
