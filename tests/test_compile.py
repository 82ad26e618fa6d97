"""--compile (pagoda/compile_util.py): the compile-time / break-even report, and that compiling changes nothing a run
keeps (checkpoint keys, exports, samples, latents) beyond float rounding."""

import re

import numpy as np
import pytest
import torch

from pagoda import checkpoint, compile_util
import sample
from tests.helpers.tiny_runs import _main, encode_run, teacher_run, tiny_dataset


def fake_clock(monkeypatch, durations):
    """time.perf_counter advancing by the given durations, one per timed unit (start, stop pairs)."""
    ticks = iter(np.cumsum([0.0] + [d for duration in durations for d in (duration, 0.0)]))
    monkeypatch.setattr(compile_util.time, "perf_counter", lambda: float(next(ticks)))


def run_units(meter, n):
    for _ in range(n):
        with meter.unit():
            pass


def test_meter_compiles_after_the_eager_units_and_logs_break_even_once(monkeypatch):
    # eager 1.0 s (first: set-up), 0.5 s; compiling unit 10.3 s; compiled 0.3 s each: 10.0 s to save 0.2 s a step
    fake_clock(monkeypatch, [1.0, 0.5, 10.3, 0.3, 0.3, 0.3, 0.3])
    compiled, lines = [], []
    meter = compile_util.CompileMeter("training step", lambda: compiled.append(True), device="cpu", log=lines.append)
    run_units(meter, 2)
    assert compiled == [True] and not lines
    run_units(meter, 5)
    meter.report()
    assert compiled == [True]
    assert lines == ["compile (training step): compiling took 10.0 s; 500.0 ms per step eager, 300.0 ms compiled "
                     "(1.67x); it pays for itself after 50 steps"]


def test_meter_says_when_compiling_never_pays_or_was_not_timed(monkeypatch):
    fake_clock(monkeypatch, [1.0, 0.5, 10.3, 0.6, 0.6, 0.6])
    lines = []
    meter = compile_util.CompileMeter("teacher", lambda: None, device="cpu", unit="call", log=lines.append)
    run_units(meter, 6)
    assert lines[-1].endswith("(0.83x); it never pays for itself here")

    fake_clock(monkeypatch, [1.0, 0.5, 10.3])
    lines = []
    meter = compile_util.CompileMeter("teacher", lambda: None, device="cpu", unit="call", log=lines.append)
    run_units(meter, 3)
    meter.report()
    assert lines == ["compile (teacher): the run ended before a compiled call was timed"]


def test_compile_forward_keeps_the_module_and_its_state_dict(monkeypatch):
    compiled = []
    monkeypatch.setattr(compile_util.torch, "compile", lambda fn: compiled.append(fn) or fn)
    net = torch.nn.Linear(3, 2)
    keys = list(net.state_dict())
    meter = compile_util.compile_forward(net, "net", device="cpu", log=lambda *a: None)
    x = torch.randn(4, 3)
    outs = [net(x) for _ in range(6)]
    assert len(compiled) == 1 and meter.done
    assert list(net.state_dict()) == keys
    assert all(torch.equal(out, outs[0]) for out in outs)


def training_state(run_dir):
    _, state = checkpoint.CheckpointManager(str(run_dir)).latest(log=lambda *a: None)
    return state


@pytest.mark.slow
def test_compiled_runs_keep_checkpoints_exports_samples_and_latents(tmp_path):
    """A tiny teacher trained 5 steps with and without --compile (2 eager steps, the compiling one, 2 compiled),
    then sampled and encoded from its export with and without it: the same keys everywhere, the same numbers up to
    float rounding, and the compile report in each log."""
    data = tiny_dataset(tmp_path / "data")
    # RAdam's first steps are un-normalised momentum steps: rounding differences stay rounding-sized. Adam's
    # g / sqrt(v) turns them into whole lr-sized steps wherever a gradient is near zero (seen: 1e-4 at lr 1e-3).
    flags = ["--total_steps", "5", "--save_interval", "5", "--optimizer", "radam"]
    exports = {mode: teacher_run(tmp_path / mode, data, *flags, "--compile", str(mode == "compiled"))
               for mode in ("eager", "compiled")}
    assert re.search(r"compile \(training step\): compiling took [\d.]+ s; [\d.]+ ms per step eager",
                     (tmp_path / "compiled" / "log.txt").read_text())
    states = {mode: training_state(tmp_path / mode) for mode in exports}
    model = {mode: state["players"]["denoiser"]["model"] for mode, state in states.items()}
    assert list(model["compiled"]) == list(model["eager"]) and not any("_orig_mod" in k for k in model["compiled"])
    assert states["compiled"]["players"]["denoiser"]["opt"]["state"].keys() == \
        states["eager"]["players"]["denoiser"]["opt"]["state"].keys()
    weights = {mode: checkpoint.torch_load(path) for mode, path in exports.items()}
    assert list(weights["compiled"]) == list(weights["eager"])
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], value, atol=1e-5, rtol=1e-4, msg=key)

    teacher = exports["eager"]
    for mode in ("eager", "compiled"):
        _main(sample, ["--model", teacher, "--out_dir", str(tmp_path / f"samples_{mode}"), "--num_samples", "8",
                       "--batch_size", "4", "--num_steps", "4", "--compile", str(mode == "compiled")])
        encode_run(tmp_path / f"latents_{mode}", teacher, data, "--compile", str(mode == "compiled"))
    assert "compile (sampler network): compiling took" in (tmp_path / "samples_compiled" / "log.txt").read_text()
    assert "compile (teacher): compiling took" in (tmp_path / "latents_compiled" / "log.txt").read_text()
    images = {mode: np.load(tmp_path / f"samples_{mode}" / "samples_8x8x8x3.npz")["arr_0"] for mode in exports}
    assert np.abs(images["compiled"].astype(int) - images["eager"]).max() <= 1  # uint8 rounding of equal floats
    latents = {mode: sorted((tmp_path / f"latents_{mode}").glob("chunk_*.npy")) for mode in exports}
    assert [p.name for p in latents["compiled"]] == [p.name for p in latents["eager"]] and latents["eager"]
    for compiled, eager in zip(latents["compiled"], latents["eager"]):
        np.testing.assert_allclose(np.load(compiled), np.load(eager), atol=1e-4, rtol=1e-4)
