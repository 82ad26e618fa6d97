"""The method table's figure: domain FD (mean +- std over seeds) against NFE and against sampling time, with the
real-vs-real floor of each resolution as a dashed line; and the guidance curves' grid of linear panels."""

from matplotlib import rcParams
from matplotlib.figure import Figure

COLOURS = rcParams["axes.prop_cycle"].by_key()["color"]
PANEL = (5.2, 3.8)  # inches; at 100 dpi one panel is 520 x 380 pixels
DPI = 100
FLOOR = dict(color="#555555", linestyle="--", linewidth=1)


def _grid(num_panels, columns):
    """A figure of `num_panels` panels, `columns` wide, and its axes in reading order (spare cells hidden)."""
    rows, cols = -(-num_panels // columns), min(columns, num_panels)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[num_panels:]:
        ax.set_axis_off()
    return fig, axes[:num_panels]


def _floor_lines(ax, floors):
    """Dashed horizontal floors, labelled at the left edge; labels staggered along x as floors often lie close."""
    for k, (label, value) in enumerate(floors):
        ax.axhline(value, **FLOOR)
        ax.text(0.02 + 0.5 * k, value, label, transform=ax.get_yaxis_transform(), color=FLOOR["color"], fontsize=8,
                va="bottom")


def write_figure(result, path):
    """Two panels side by side: domain FD vs NFE, and vs seconds per 1000 samples. Both axes are logarithmic: the
    costs span decades and the scores run from the floor (about 1) to broken samplers (hundreds)."""
    rows = result["rows"]
    largest = {}  # the floor at each resolution's largest n: the one most rows are compared with
    for f in result["floors"]:
        if f["n"] >= largest.get(f["resolution"], {"n": 0})["n"]:
            largest[f["resolution"]] = f
    floors = [(f"real vs real, {size} px (floor)", f["scores"]["fd"]["mean"]) for size, f in sorted(largest.items())]
    fig, axes = _grid(2, 2)
    panels = ((lambda r: r["nfe"], "domain FD (mean +- std over seeds) vs NFE", "network evaluations per sample"),
              (lambda r: 1000.0 / r["images_per_s"], "domain FD vs sampling time", "seconds per 1000 samples"))
    for ax, (x_of, title, xlabel) in zip(axes, panels):
        for i, r in enumerate(rows):
            colour, fd = COLOURS[i % len(COLOURS)], r["scores"]["fd"]
            ax.errorbar(x_of(r), fd["mean"], yerr=fd["std"] or None, fmt="o", capsize=4, color=colour)
            ax.annotate(r["label"], (x_of(r), fd["mean"]), xytext=(6, 4), textcoords="offset points", color=colour,
                        fontsize=8)
        _floor_lines(ax, floors)
        ax.set(xscale="log", yscale="log", title=title, xlabel=f"{xlabel} (log)")
        ax.margins(x=0.25)  # room for the labels right of the points
    fig.savefig(path)


def write_curve_figure(panels, path, *, xlabel, columns=2):
    """Linear panels on a grid, `columns` wide. panels = [(title, series, floor)]: series = [(name, colour,
    [(x, mean, std)])] drawn as lines with error bars, floor a value drawn dashed or None. Linear axes: a curve over a
    few settings (a guidance scale) rather than a cost spanning decades."""
    fig, axes = _grid(len(panels), columns)
    for ax, (title, series, floor) in zip(axes, panels):
        for name, colour, points in series:
            x, mean, std = zip(*sorted(points))
            ax.errorbar(x, mean, yerr=[s or 0 for s in std], marker="o", capsize=4, color=colour, label=name)
        if floor is not None:
            _floor_lines(ax, [("real vs real (floor)", floor)])
        ax.set(title=title, xlabel=xlabel, xticks=sorted({p[0] for _, _, points in series for p in points}))
        ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path)
