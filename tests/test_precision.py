"""--precision auto: what it resolves to (capability check mocked), what the records store, what bf16 does to the
UNet's output, and that autocast never changes the dtype of anything written to disk."""

import json

import numpy as np
import pytest
import torch

from pagoda import amp
from pagoda.checkpoint import load_export
from pagoda.precond import Denoiser
from pagoda.unet import UNetModel
from tests.helpers import tiny_runs

import sample


@pytest.fixture
def native_bf16(monkeypatch):
    """native_bf16(flag): make the CPU capability check answer `flag`."""
    return lambda flag: monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: flag)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert amp.cpu_flags(str(x86)) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}
    assert amp.cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert amp.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags,native", [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True),
                                          ({"avx512f", "avx2"}, False), (set(), False)])
def test_cpu_native_bf16_needs_amx_or_avx512_bf16(monkeypatch, flags, native):
    monkeypatch.setattr(amp, "cpu_flags", lambda: flags)
    monkeypatch.delenv("PAGODA_CPU_BF16", raising=False)  # conftest's override, off for this test
    amp.cpu_has_native_bf16.cache_clear()
    try:
        assert amp.bf16_native("cpu") is native
    finally:
        amp.cpu_has_native_bf16.cache_clear()


def test_auto_resolves_by_capability(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(amp, "bf16_native", lambda device: torch.device(device).type == "cuda")
    assert amp.resolve_precision("auto", "cuda") == "bf16"
    assert amp.resolve_precision("auto", "cpu") == "fp32"


def test_explicit_precisions_pass_through_and_bad_ones_are_refused(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert [amp.resolve_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\], got 'half'"):
        amp.resolve_precision("half", "cpu")


def test_auto_logs_what_it_chose(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    lines = []
    amp.resolve_precision("auto", "cpu", log=lines.append)
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(amp, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    amp.resolve_precision("auto", "cpu", log=lines.append)
    assert lines == ["precision auto -> fp32 (cpu: no native bf16)",
                     "precision auto -> bf16 (cpu: native bf16 (amx_bf16, avx512_bf16))"]


# Relative L2 error of the bf16 denoiser against fp32 at the bundled teacher's width. This random network
# (N(0, 0.05) weights) measures 0.13% / 1.6% / 3.0% / 3.1% at sigma 0.1 / 1 / 10 / 80; the quickstart's trained
# teacher 0.19% / 0.27% / 0.30% / 0.32% on test digits. The bound leaves room for other CPUs' bf16 kernels.
BF16_RELATIVE_ERROR = 0.05


@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0, 80.0])
def test_bf16_denoiser_stays_close_to_fp32(sigma):
    torch.manual_seed(0)
    net = UNetModel(image_size=16, model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1,
                    attention_resolutions=(2, 4), num_head_channels=32, num_classes=10)
    for p in net.parameters():
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    denoiser = Denoiser(net, sigma_data=0.5).eval()
    x = torch.randn(8, 3, 16, 16) * (sigma**2 + 0.25) ** 0.5
    s, y = torch.full((8,), sigma), torch.arange(8)
    with torch.no_grad():
        ref = denoiser(x, s, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = denoiser(x, s, y)
    assert low.dtype == torch.float32  # the preconditioning's output is fp32 whatever the backbone ran in
    error = (low - ref).norm() / ref.norm()
    assert 0 < error < BF16_RELATIVE_ERROR, error


def _dtypes(obj):
    if isinstance(obj, torch.Tensor):
        return {obj.dtype} if obj.is_floating_point() else set()
    if isinstance(obj, dict):
        return set().union(*map(_dtypes, obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*map(_dtypes, obj)) if obj else set()
    return set()


def _run_pipeline(tmp_path, precision):
    data = tiny_runs.tiny_dataset(tmp_path / "data")
    teacher = tiny_runs.teacher_run(tmp_path / "teacher", data, "--precision", precision)
    latents = tmp_path / "latents"
    tiny_runs.encode_run(latents, teacher, data, "--storage", "fp16", "--precision", precision)
    generator = tiny_runs.stage2_run(tmp_path / "stage2", teacher, str(latents), "--precision", precision)
    tiny_runs._main(sample, ["--model", generator, "--out_dir", str(tmp_path / "samples"), "--num_samples", "4",
                             "--batch_size", "4", "--chunk_size", "4", "--precision", precision])
    return teacher, latents, generator


def _records(tmp_path, latents):
    with open(tmp_path / "teacher" / "config.json") as f:
        teacher = json.load(f)["precision"]
    with open(tmp_path / "stage2" / "config.json") as f:
        stage2 = json.load(f)["precision"]
    with open(latents / "manifest.json") as f:
        encoder = json.load(f)["settings"]["precision"]
    with open(tmp_path / "samples" / "parts" / "identity.json") as f:
        sampler = json.load(f)["precision"]
    return [teacher, encoder, stage2, sampler]


@pytest.mark.parametrize("native", [False, True])
def test_auto_pipeline_records_the_resolved_precision_and_stores_fp32(tmp_path, native_bf16, native):
    """A CPU without bf16 runs every stage in fp32; one with it in bf16. Either
    way the records name the resolved precision, never 'auto', and what is written keeps its dtype: fp32 weights,
    optimiser states and exports, fp16 latents (the storage asked for), uint8 samples."""
    native_bf16(native)
    teacher, latents, generator = _run_pipeline(tmp_path, "auto")
    assert _records(tmp_path, latents) == ["bf16" if native else "fp32"] * 4
    for run in ("teacher", "stage2"):
        states = sorted((tmp_path / run / "checkpoints").glob("*.pt"))
        assert states and all(_dtypes(torch.load(s, map_location="cpu", weights_only=False)) == {torch.float32}
                              for s in states)
    for export in (teacher, generator):
        assert _dtypes(load_export(export)[0]) == {torch.float32}
    chunks = sorted(latents.glob("chunk_*.npy"))
    assert chunks and {np.load(c).dtype for c in chunks} == {np.dtype(np.float16)}
    samples = np.load(next((tmp_path / "samples").glob("samples_*.npz")))
    assert samples["arr_0"].dtype == np.uint8


@pytest.mark.parametrize("value,native", [("0", False), ("1", True)])
def test_environment_overrides_the_cpu_flags(monkeypatch, value, native):
    monkeypatch.setenv("PAGODA_CPU_BF16", value)
    amp.cpu_has_native_bf16.cache_clear()
    try:
        assert amp.cpu_has_native_bf16() is native
        monkeypatch.setenv("PAGODA_CPU_BF16", "yes")
        amp.cpu_has_native_bf16.cache_clear()
        with pytest.raises(ValueError, match="PAGODA_CPU_BF16 must be 0 or 1, got 'yes'"):
            amp.cpu_has_native_bf16()
    finally:
        amp.cpu_has_native_bf16.cache_clear()
