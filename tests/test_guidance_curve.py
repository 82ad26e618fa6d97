"""scripts/guidance_curve.py: models grouped from a method table's rows, rank correlations over w, the generator
against the teacher at each w, and the figure and table written beside compare.json."""

import json

import pytest
from PIL import Image

import guidance_curve


def _scores(fd, precision, recall, fidelity, std=0.01):
    def s(mean, spread):
        return {"mean": mean, "std": spread, "values": [mean - spread, mean + spread]}
    return {"fd": s(fd, 1.0), "kid": s(1.0, 0.1), "precision": s(precision, std), "recall": s(recall, std),
            "class_fidelity": s(fidelity, std)}


def _table():
    teacher = [(1, 20, 0.70, 0.92, 0.89), (2, 25, 0.74, 0.78, 0.99), (4, 80, 0.75, 0.45, 1.00)]
    generator = [(1, 20.5, 0.70, 0.91, 0.89), (2, 30, 0.73, 0.79, 0.99), (4, 79, 0.76, 0.50, 1.00)]
    rows = []
    for name, path, points in (("teacher", "t.pt", teacher), ("generator", "g.pt", generator)):
        for w, *values in points:
            rows.append({"label": f"{name}_w{w}", "path": path, "sampler": "heun", "steps": 18, "upsample": 0,
                         "guidance_scale": float(w), "n": 10, "scores": _scores(*values)})
    floors = [{"resolution": 16, "n": 10, "num_blocks": 3, "scores": _scores(15, 0.9, 0.88, 0.99)}]
    return {"protocol": {"num_seeds": 3}, "rows": rows[3:5] + rows[:3] + rows[5:], "floors": floors}


def test_spearman_and_ties():
    assert guidance_curve.ranks([3, 1, 2, 2]) == [4.0, 1.0, 2.5, 2.5]
    assert guidance_curve.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert guidance_curve.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert guidance_curve.spearman([1, 2, 3], [1, 1, 1]) is None
    assert guidance_curve.spearman([1], [1]) is None


def test_summary_groups_models_and_compares_with_the_reference():
    table = _table()
    table["rows"] = sorted(table["rows"], key=lambda r: r["path"] != "t.pt")  # the reference (first model): teacher
    summary = guidance_curve.summarise(table)
    teacher, generator = summary["models"]
    assert (teacher["name"], generator["name"], summary["reference"]) == ("teacher", "generator", "teacher")
    assert [p["w"] for p in generator["points"]] == [1.0, 2.0, 4.0]
    assert teacher["spearman"]["recall"] == pytest.approx(-1.0)
    assert teacher["spearman"]["precision"] == pytest.approx(1.0)
    assert generator["vs_reference"]["fd"] == {"1.0": "tie", "2.0": "worse", "4.0": "tie"}
    assert generator["vs_reference"]["recall"]["4.0"] == "better"
    assert generator["within_spread_everywhere"] == {"fd": False, "precision": True, "recall": False,
                                                     "class_fidelity": True}
    assert summary["floor"]["fd"]["mean"] == 15


def test_two_rows_of_one_model_at_one_w_are_refused():
    table = _table()
    table["rows"].append(dict(table["rows"][0], label="again"))
    with pytest.raises(ValueError, match="two rows at one w"):
        guidance_curve.summarise(table)


def test_writes_the_figure_and_the_table_beside_compare_json(tmp_path):
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(_table()))
    guidance_curve.main(["--compare", str(path)])
    with Image.open(tmp_path / "guidance.png") as img:
        assert img.size == (2 * 520, 2 * 380)
    text = (tmp_path / "guidance.md").read_text()
    assert "| 1 | " in text and "| 4 | " in text and "Spearman" in text and "all ties" in text
    summary = json.loads((tmp_path / "guidance.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["generator", "teacher"]


def test_the_sample_grid_has_one_row_per_model_and_w_in_the_table_order(tmp_path):
    import numpy as np  # noqa: PLC0415
    table = _table()
    table["rows"] = sorted(table["rows"], key=lambda r: r["path"] != "t.pt")
    for k, row in enumerate(table["rows"]):  # row k's samples all have the value 10 k + j in sample j
        images = (10 * k + np.arange(15, dtype=np.uint8))[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
        row["samples"] = str(tmp_path / f"s{k}.npz")
        np.savez(row["samples"], images, np.zeros(15, np.int64))
    summary = guidance_curve.summarise(table)
    assert guidance_curve.write_sample_grid(summary, str(tmp_path / "grid.png"))
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    # 6 rows (teacher, generator x 3 w) of 12 tiles of 4 px, 1 px padding, enlarged 4x
    assert grid.shape == (4 * (6 * 5 + 1), 4 * (12 * 5 + 1), 3)
    tile = grid[4 * (1 + 2 * 5):, 4 * (1 + 3 * 5):][0, 0]  # grid row 2 (teacher at w = 4), column 3
    order = [r["label"] for r in table["rows"]]
    assert tile[0] == 10 * order.index("teacher_w4") + 3
    table["rows"][1]["samples"] = str(tmp_path / "gone.npz")
    assert guidance_curve.write_sample_grid(guidance_curve.summarise(table), str(tmp_path / "g2.png")) is False
