"""scripts/quickstart_report.py: Inception over the method table's seed blocks and over disjoint floor blocks.

The evaluator is replaced by one whose "FID" is the mean pixel of the sample batch and whose "KID" is its first
label, so each score says exactly which images were scored."""

import json

import numpy as np
import pytest

import quickstart_report


def _fake_evaluate(ref, sample, **kwargs):
    with np.load(sample) as data:
        images, labels = data["arr_0"], data["arr_1"]
    return {"fid": float(images.mean()), "kid": float(labels[0]), "num_sample_images": len(images),
            "num_ref_images": 7, "inception_weights": "fake"}


def _table(tmp_path, n=5, seeds=3):
    """A method table of one 4 px row whose sample i is filled with the value i, labelled i."""
    images = np.repeat(np.arange(n * seeds, dtype=np.uint8), 4 * 4 * 3).reshape(n * seeds, 4, 4, 3)
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=images, arr_1=np.arange(n * seeds))
    row = {"label": "g (1 step)", "samples": str(path), "upsample": 0, "n": n, "nfe": 1, "resolution": 4,
           "images_per_s": 1.0, "scores": {k: {"mean": 0.0, "std": 0.0, "values": [0.0] * seeds}
                                           for k in quickstart_report.DOMAIN_KEYS}}
    floor = {"resolution": 4, "n": n, "scores": row["scores"]}
    return {"rows": [row], "floors": [floor], "protocol": {"num_seeds": seeds}}


def test_inception_scores_the_first_samples_of_each_seed_block(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart_report, "evaluate", _fake_evaluate)
    (row,) = quickstart_report.measure_rows(str(tmp_path), _table(tmp_path), None, num_inception=2, seeds=3)
    scores = row["inception"]["scores"]
    # seed k is samples [5k, 5k + 5); its first two are 5k and 5k + 1
    assert scores["fid"]["values"] == [0.5, 5.5, 10.5] and scores["kid"]["values"] == [0.0, 5.0, 10.0]
    assert scores["fid"]["mean"] == pytest.approx(5.5) and scores["fid"]["std"] == pytest.approx(5.0)
    assert row["inception"]["fid"] == pytest.approx(5.5) and row["inception"]["seeds"] == 3
    assert row["inception"]["num_sample_images"] == 2
    json.dumps(row)  # the report writes it


def test_one_seed_keeps_the_single_batch_and_has_no_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart_report, "evaluate", _fake_evaluate)
    (row,) = quickstart_report.measure_rows(str(tmp_path), _table(tmp_path), None, num_inception=4)
    assert row["inception"]["scores"]["fid"] == {"mean": 1.5, "std": None, "values": [1.5]}
    line = quickstart_report.results_table([row], [])[-1]
    assert "| 1.50 | 0.00 |" in line  # FID, KID x 1e3, without a spread


def test_more_inception_seeds_than_the_table_has_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart_report, "evaluate", _fake_evaluate)
    with pytest.raises(ValueError, match=r"^4 Inception seeds of 2 samples: the method table has 3 seeds of 5 "
                                         r"samples per row$"):
        quickstart_report.measure_rows(str(tmp_path), _table(tmp_path), None, num_inception=2, seeds=4)
    with pytest.raises(ValueError, match="2 Inception seeds of 6 samples"):
        quickstart_report.measure_rows(str(tmp_path), _table(tmp_path), None, num_inception=6, seeds=2)


def test_floor_blocks_are_disjoint_and_a_short_floor_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart_report, "evaluate", _fake_evaluate)
    floor = np.repeat(np.arange(6, dtype=np.uint8), 48).reshape(6, 4, 4, 3)
    np.savez(tmp_path / "ref4_floor.npz", arr_0=floor, arr_1=np.arange(6))
    (row,) = quickstart_report.floor_rows(str(tmp_path), _table(tmp_path), None, num_inception=2, seeds=3)
    assert row["inception"]["scores"]["kid"]["values"] == [0.0, 2.0, 4.0]
    assert row["model"] == "real vs real (floor)" and row["domain_n"] == 5
    with pytest.raises(ValueError, match=r"ref4_floor\.npz holds 6 images; 3 floor blocks of 3 need 9: delete it "
                                         r"and rerun the recipe, which rebuilds it$"):
        quickstart_report.floor_rows(str(tmp_path), _table(tmp_path), None, num_inception=3, seeds=3)
