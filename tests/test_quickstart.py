"""The quickstart's --fast mode end to end (CI): every stage runs and the report has every row, finite numbers."""

import json
import math
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ["teacher (Heun)", "stage 2 generator (1 step)", "stage 3 generator (1 step, 2x)",
          "stage 2 + bicubic 2x (baseline)"]
STAGES = ["teacher", "encode", "stage2", "stage3", "compare", "evaluation"]
DOMAIN = ["fd", "kid", "precision", "recall", "class_fidelity"]


@pytest.mark.slow
def test_fast_quickstart_report_structure(tmp_path):
    run = tmp_path / "qs"
    out = subprocess.run(["bash", os.path.join(REPO, "commands", "quickstart.sh"), "--fast"], cwd=REPO,
                         env=dict(os.environ, RUN_DIR=str(run)), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == MODELS
    for row in report["rows"] + report["floors"]:
        inception = row["inception"]
        assert math.isfinite(inception["fid"]) and inception["fid"] >= 0, row
        assert math.isfinite(inception["kid"]) and inception["num_sample_images"] == 16
        assert sorted(row["domain"]) == sorted(DOMAIN) and row["domain_n"] == 20
        assert all(math.isfinite(row["domain"][k]["mean"]) for k in DOMAIN), row
    for row in report["rows"]:  # three seeds: every domain score has a spread
        assert all(row["domain"][k]["std"] is not None and len(row["domain"][k]["values"]) == 3 for k in DOMAIN)
    assert [(f["model"], f["resolution"]) for f in report["floors"]] == [("real vs real (floor)", 16),
                                                                         ("real vs real (floor)", 32)]
    assert [r["resolution"] for r in report["rows"]] == [16, 16, 32, 32]
    assert [r["nfe"] for r in report["rows"]] == [11, 1, 1, 1]
    for row in report["rows"][:3]:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
    recon = report["reconstruction"]
    assert [(r["stage"], r["resolution"], r["num_pairs"]) for r in recon] == [("stage2", 16, 128), ("stage3", 32, 128)]
    for r in recon:
        assert all(math.isfinite(r[k]) for k in ("init_db", "trained_db")), r
    assert recon[0]["bicubic_db"] is None and math.isfinite(recon[1]["bicubic_db"])
    # the recipe re-fits the grown head, so stage 3 starts near the up-sampled parent (measured: 0.8 dB below it)
    assert [r["init"] for r in recon] == ["teacher copy", "grown stage 2, head re-fitted"]
    assert abs(recon[1]["init_db"] - recon[1]["bicubic_db"]) < 3, recon[1]
    assert report["encoder_round_trip"]["num_decoded"] == 64
    assert math.isfinite(report["encoder_round_trip"]["psnr_mean_db"])
    speed = report["side_by_side_speed"]
    assert speed["batch"] == 16 and speed["teacher_nfe"] == 11 and math.isfinite(speed["ratio"])
    assert speed["ratio"] == pytest.approx(speed["stage2_images_per_s"] / speed["teacher_images_per_s"])
    assert set(report["stage_seconds"]) == set(STAGES)
    assert all(v is not None and v > 0 for v in report["stage_seconds"].values())
    text = (run / "report.md").read_text()
    assert all(m in text for m in MODELS) and "| **total** |" in text and "timed side by side" in text
    for name in ("comparison.png", "loss_teacher.png", "loss_stage2.png", "loss_stage3.png", "compare/compare.png",
                 "compare/compare.md"):
        assert (run / name).stat().st_size > 0
    assert "| teacher (Heun) |" in out.stdout  # the report is printed at the end

    # a rerun resumes every stage instead of starting over
    again = subprocess.run(["bash", os.path.join(REPO, "commands", "quickstart.sh"), "--fast"], cwd=REPO,
                           env=dict(os.environ, RUN_DIR=str(run)), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    for stage, step in (("teacher", 20), ("stage2", 20), ("stage3", 10)):
        assert f"resumed from step {step} ({run}/{stage}/checkpoints/state_{step:07d}.pt)" in again.stdout
