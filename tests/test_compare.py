"""scripts/compare.py: the method table on tiny exports and a tiny labelled dataset, end to end in-process."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from evaluations import protocol
from pagoda.domain import cropped_images, domain_features, domain_scores, load_domain_classifier
from pagoda.image_datasets import open_source
from pagoda.image_util import resize_bicubic
from tests.helpers.exports import tiny_export as _export

import compare


def _labelled(path, n, seed):
    """4 classes of 8 px images, each class a bright quadrant over noise: easy to classify."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % 4
    images = rng.randint(0, 60, (n, 8, 8, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] = 230
    np.savez(path, arr_0=images, arr_1=labels)
    return str(path)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # the domain classifier's cache
    train, held = _labelled(tmp / "train.npz", 400, 0), _labelled(tmp / "held.npz", 200, 1)
    teacher, gen = _export(tmp / "teacher.pt", "teacher"), _export(tmp / "gen.pt", "generator")
    argv = ["--data_dir", train, "--heldout_dir", held, "--out_dir", str(tmp / "out"), "--num_samples", "20",
            "--chunk_size", "10", "--batch_size", "10", "--kid_subsets", "10",
            "--row", f"teacher={teacher}@sampler=heun,steps=2", "--row", f"gen={gen}",
            "--row", f"gen + bicubic={gen}@upsample=16", "--gap_row", "gen + bicubic"]
    result = compare.main(argv)
    yield {"tmp": tmp, "argv": argv, "result": result, "held": held}
    os.environ.pop("XDG_CACHE_HOME", None)


def test_rows_nfe_resolution_and_shared_samples(table):
    rows = table["result"]["rows"]
    assert [(r["label"], r["nfe"], r["resolution"], r["n"]) for r in rows] == [
        ("teacher", 3, 8, 20), ("gen", 1, 8, 20), ("gen + bicubic", 1, 16, 20)]
    assert rows[1]["samples"] == rows[2]["samples"] != rows[0]["samples"]  # the bicubic row reuses gen's samples
    assert [r["vs_anchor"] for r in rows][0] == "anchor" and table["result"]["anchor"] == "teacher"
    for r in rows:
        assert set(r["scores"]) >= {"fd", "kid", "precision", "recall", "class_fidelity"}
        assert len(r["per_seed"]) == 3 and r["scores"]["fd"]["std"] is not None


def _reference(held, model, size):
    source = open_source(held)
    ref, _ = protocol.reference_split(len(source), seed=0)
    return domain_features(model, cropped_images(source, size))[0][ref]


def test_scores_are_the_domain_scores_of_each_seed_block(table):
    """Seed k is samples [20k, 20k + 20); the bicubic row scores gen's samples up-sampled, at 16 px."""
    model = load_domain_classifier(table["result"]["protocol"]["classifier"]["path"])
    rows = table["result"]["rows"]
    with np.load(rows[1]["samples"]) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (60, 8, 8, 3) and labels.tolist() == [i % 4 for i in range(60)]
    for row, imgs, size in ((rows[1], images, 8), (rows[2], resize_bicubic(images, 16), 16)):
        feats, logits = domain_features(model, imgs)
        block = slice(20, 40)
        expected = domain_scores(_reference(table["held"], model, size), feats[block], logits[block], labels[block],
                                 kid_subsets=10, seed=0)
        for key in ("fd", "kid", "precision", "recall", "class_fidelity"):
            assert row["per_seed"][1][key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
        values = [s["fd"] for s in row["per_seed"]]
        assert row["scores"]["fd"]["mean"] == pytest.approx(np.mean(values))
        assert row["scores"]["fd"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_floors_score_disjoint_real_blocks(table):
    floors = table["result"]["floors"]
    assert [(f["resolution"], f["n"], f["num_blocks"]) for f in floors] == [(8, 20, 3), (16, 20, 3)]
    for f in floors:
        assert 0 <= f["scores"]["fd"]["mean"] and f["scores"]["class_fidelity"]["mean"] > 0.9


def test_a_bicubic_row_gets_the_floor_of_upsampled_reals(table):
    """Held-out floor reals cropped at 8 px and up-sampled bicubically to 16, scored in the floor's blocks."""
    (floor,) = table["result"]["upsampled_floors"]
    assert (floor["upsampled_from"], floor["resolution"], floor["n"], floor["num_blocks"]) == (8, 16, 20, 3)
    assert table["result"]["rows"][2]["base_resolution"] == 8
    model = load_domain_classifier(table["result"]["protocol"]["classifier"]["path"])
    source = open_source(table["held"])
    _, floor_idx = protocol.reference_split(len(source), seed=0)
    images = resize_bicubic(cropped_images(source, 8, floor_idx), 16)
    feats, logits = domain_features(model, images)
    block = slice(40, 60)
    expected = domain_scores(_reference(table["held"], model, 16), feats[block], logits[block],
                             np.asarray(source.labels)[floor_idx][block], kid_subsets=10, seed=0)
    assert floor["per_seed"][2]["fd"] == pytest.approx(expected["fd"], rel=1e-9)
    assert "| real 8 px + bicubic (floor, 3 blocks) | 16 px | - | 20 |" in (table["tmp"] / "out" / "compare.md").read_text()


def test_outputs_markdown_json_and_figure(table):
    out = table["tmp"] / "out"
    text = (out / "compare.md").read_text()
    assert "| row | res | NFE | n/seed | domain FD | domain KID |" in text and "| vs teacher |" in text
    assert "| real vs real (floor, 3 blocks) | 8 px | - | 20 |" in text and "Resolution check:" in text
    assert json.loads((out / "compare.json").read_text())["rows"][0]["label"] == "teacher"
    assert Image.open(out / "compare.png").size == (1040, 380)


def test_rerun_resumes_without_sampling_again(table):
    parts = sorted((table["tmp"] / "out" / "samples").glob("*/parts/part_*.npz"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    again = compare.main(table["argv"])
    assert {p: p.stat().st_mtime_ns for p in parts} == before
    for a, b in zip(again["rows"], table["result"]["rows"]):
        assert a["per_seed"] == b["per_seed"]
        if not a["upsample"]:  # the speed measured when the samples were made (a bicubic row re-times its resize)
            assert a["images_per_s"] == b["images_per_s"]


@pytest.mark.parametrize("text, message", [
    ("no-equals-sign", "expected LABEL=EXPORT"),
    ("a={path}@colour=red", "unknown option 'colour'"),
    ("a={path}@guidance=2", r"unknown option 'guidance' \(renamed guidance_scale\); known: sampler, steps, "
                            "guidance_scale, n, upsample"),
    ("a={path}@steps=many", "steps='many' is not a valid int"),
    ("a={path}@n=1", "need n >= 2"),
    ("a=/nowhere/model.pt", "export /nowhere/model.pt not found"),
])
def test_bad_rows_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "m.pt"
    path.write_bytes(b"")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        compare.parse_row(text.format(path=path), 10)


def test_row_defaults_and_at_sign_in_path(tmp_path):
    folder = tmp_path / "run@2"
    folder.mkdir()
    (folder / "m.pt").write_bytes(b"")
    row = compare.parse_row(f"x={folder}/m.pt", 10)
    assert (row.path, row.n, row.sampler, row.steps, row.upsample) == (f"{folder}/m.pt", 10, "heun", 18, 0)


def test_data_without_a_heldout_split_needs_heldout_dir(tmp_path):
    gen = _export(tmp_path / "g.pt", "generator")
    with pytest.raises(SystemExit):
        compare.main(["--data_dir", _labelled(tmp_path / "d.npz", 20, 0), "--row", f"g={gen}",
                      "--out_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("sampler_nfe, guidance_scale, expected", [(35, 1.0, 35), (35, 2.0, 70), (1, 1.5, 2)])
def test_guided_rows_count_two_network_calls_per_step(sampler_nfe, guidance_scale, expected):
    class Sampler:
        nfe = sampler_nfe
    assert compare.row_nfe(Sampler(), compare.Row(label="x", path="p", guidance_scale=guidance_scale)) == expected
