"""--log_format csv,tensorboard: event files hold what progress.csv holds, at the same steps, plus the preview grids;
a resumed run's curves go on without repeating a step."""

import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

from pagoda import logger
from tests.helpers.tiny_runs import teacher_run, tiny_dataset

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TB = ["--log_format", "csv,tensorboard", "--preview_interval", "2", "--preview_steps", "2", "--save_interval", "2"]


def _events(run_dir):
    """{tag: [(step, value)]} and {tag: [(step, uint8 HWC image)]} as TensorBoard reads the folder."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    images = {tag: [(e.step, _decode(e.encoded_image_string)) for e in acc.Images(tag)]
              for tag in acc.Tags()["images"]}
    return scalars, images


def _decode(png):
    return np.asarray(Image.open(io.BytesIO(png)))


def _progress(run_dir):
    """{key: {step: value}} of progress.csv; a step logged twice (a crash after it) keeps its last row."""
    table = {}
    with open(os.path.join(run_dir, "progress.csv"), newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "":
                    table.setdefault(key, {})[int(row["step"])] = float(value)
    return table


def _assert_same_as_csv(run_dir, steps):
    """Every key at the same steps as its filled progress.csv cells (some keys, e.g. the loss quartiles, are only
    logged at some steps), with the same values; every logged step in `steps`."""
    scalars, _ = _events(run_dir)
    table = _progress(run_dir)
    assert set(scalars) == set(table)
    assert [s for s, _ in scalars["lr/denoiser"]] == steps
    for key, values in scalars.items():
        assert [s for s, _ in values] == sorted(table[key]), key
        np.testing.assert_allclose([v for _, v in values], [table[key][s] for s, _ in values], rtol=1e-6,
                                   err_msg=key)


@pytest.fixture
def data(tmp_path):
    return tiny_dataset(tmp_path / "data")


def test_events_hold_the_csv_scalars_and_the_preview_grids(tmp_path, data):
    run = tmp_path / "run"
    teacher_run(run, data, *TB, "--total_steps", "4")
    _assert_same_as_csv(run, [1, 2, 3, 4])
    _, images = _events(run)
    assert [step for step, _ in images["samples/denoiser"]] == [2, 4] and list(images) == ["samples/denoiser"]
    for step, image in images["samples/denoiser"]:  # the PNG's grid (64 previews of 8 px), before its 16x enlarging
        png = np.asarray(Image.open(run / "samples" / f"{step:07d}.png"))
        assert image.shape == (73, 73, 3)
        np.testing.assert_array_equal(image, png[::16, ::16])


def test_resumed_run_appends_without_repeating_steps(tmp_path, data):
    run = tmp_path / "run"
    teacher_run(run, data, *TB, "--total_steps", "4")
    # an interrupted run: the events and progress.csv rows of steps 3 and 4 were written, the state of step 4 lost
    os.remove(run / "checkpoints" / "state_0000004.pt")
    before, _ = _events(run)
    teacher_run(run, data, *TB, "--total_steps", "6")
    _assert_same_as_csv(run, [1, 2, 3, 4, 5, 6])
    after, images = _events(run)
    assert after["loss/denoiser/loss"][:2] == before["loss/denoiser/loss"][:2]  # steps before the resume kept
    assert [step for step, _ in images["samples/denoiser"]] == [2, 4, 6]


def test_csv_only_writes_no_events(tmp_path, data):
    run = tmp_path / "run"
    teacher_run(run, data)
    assert not [f for f in os.listdir(run) if f.startswith("events.out.tfevents")]


def test_only_rank_zero_writes_events(tmp_path, monkeypatch):
    monkeypatch.setattr(logger.dist_util, "is_main", lambda: False)
    log = logger.Logger(str(tmp_path), formats=("csv", "tensorboard"))
    log.start_at(0)
    log.log_image("samples/x", np.zeros((4, 8, 8, 3), np.uint8), 1)
    log.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"unknown log formats \['wandb'\]"):
        logger.Logger(str(tmp_path), formats=("csv", "wandb"))
