"""Remote inputs (pagoda.remote) against a loopback Azure blob stand-in (tests/helpers/blob_store.py): fetch once and
reuse, damaged and truncated downloads refetched, killed fetches never taken for complete, pinned hashes, folders,
unreachable hosts, remote outputs refused, and sample.py / train.py end to end from URLs.

The stand-in speaks the blob REST API blobfile uses, so the real blobfile client runs; only 127.0.0.1 is contacted.
It is a Python server rather than the Azurite emulator because a clone must test without npm packages and the faults
(damaged bodies, a fetch killed midway) must be injectable; where Azurite is installed, the last test checks
pagoda.remote against it.
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pagoda import logger, remote, script_util
from tests.helpers.azurite import Azurite, azurite_binary
from tests.helpers.blob_store import BlobStore
from tests.helpers.exports import tiny_export
from tests.helpers.tiny_runs import encode_run, stage2_run, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = bytes(range(256)) * 400


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no Azure login of the machine's user is looked at
    for name in ("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING",
                 "AZURE_APPLICATION_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_USE_IDENTITY"):
        monkeypatch.delenv(name, raising=False)
    with BlobStore() as blobs:
        monkeypatch.setenv(remote.ENDPOINT_ENV, blobs.endpoint)
        monkeypatch.setattr(remote, "_CONTEXT", None)
        yield blobs
    monkeypatch.setattr(remote, "_CONTEXT", None)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _cached_files(tmp_path):
    root = tmp_path / "cache" / "pagoda" / "remote"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def test_fetched_once_then_read_from_the_cache(store):
    store.put("teachers/t.pt", PAYLOAD)
    path = remote.localize(store.url("teachers/t.pt"))
    assert _read(path) == PAYLOAD and store.fetches("teachers/t.pt") == 1
    assert remote.localize(store.url("teachers/t.pt")) == path
    assert remote.localize("az://pagodatest/models/teachers/t.pt") == path  # the same blob, the same copy
    assert store.fetches("teachers/t.pt") == 1
    store.put("teachers/t.pt", PAYLOAD[::-1])  # a new version at the same URL replaces the copy
    assert _read(remote.localize(store.url("teachers/t.pt"))) == PAYLOAD[::-1]
    assert store.fetches("teachers/t.pt") == 2


def test_an_export_brings_its_sidecar_and_loses_it_with_the_store(store):
    store.put("e/gen.pt", PAYLOAD)
    store.put("e/gen.json", b'{"kind": "generator"}')
    path = remote.localize(store.url("e/gen.pt"))
    assert _read(path[:-3] + ".json") == b'{"kind": "generator"}'
    del store.blobs["e/gen.json"]  # weights without a sidecar now (e.g. replaced by a released file)
    assert remote.localize(store.url("e/gen.pt")) == path and not os.path.exists(path[:-3] + ".json")


def test_local_paths_pass_through_untouched(tmp_path):
    for path in ("runs/x.pt", "bundled:mnist", "", str(tmp_path)):
        assert remote.localize(path) == path


def test_damaged_download_is_refused_and_fetched_again(store, tmp_path):
    store.put("t.pt", PAYLOAD)
    store.damage["t.pt"] = 1  # one corrupted body: the md5 the store reports catches it
    assert _read(remote.localize(store.url("t.pt"))) == PAYLOAD
    assert store.fetches("t.pt") == 2
    store.put("u.pt", PAYLOAD)
    store.damage["u.pt"] = 2
    with pytest.raises(remote.RemoteError, match=r"u\.pt: the download has md5 .*, twice; nothing was cached"):
        remote.localize(store.url("u.pt"))
    assert not [f for f in _cached_files(tmp_path) if "u.pt" in f]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cached_copy_is_fetched_again(store, damage):
    store.put("t.pt", PAYLOAD)
    path = remote.localize(store.url("t.pt"))
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(1000)
        else:  # same size, one byte changed: the sha256 recorded at download catches it
            f.seek(500)
            f.write(bytes([PAYLOAD[500] ^ 1]))
    assert _read(remote.localize(store.url("t.pt"))) == PAYLOAD
    assert store.fetches("t.pt") == 2


def test_killed_fetch_leaves_nothing_that_passes_for_complete(store, tmp_path):
    store.put("big.pt", PAYLOAD * 4)
    store.throttle = 0.2  # the body arrives in 16 slices over about 3 s
    code = f"from pagoda import remote; remote.localize({store.url('big.pt')!r})"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (store.sent["big.pt"] and any(".partial." in f for f in _cached_files(tmp_path))):
            assert time.time() < deadline and child.poll() is None, child.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        assert store.sent["big.pt"] < len(PAYLOAD) * 4  # killed midway
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = _cached_files(tmp_path)
    assert not [f for f in left if f.endswith("data/big.pt") or "records/" in f], left
    store.throttle = 0.0
    path = remote.localize(store.url("big.pt"))
    assert _read(path) == PAYLOAD * 4
    assert not [f for f in _cached_files(tmp_path) if ".partial." in f]


def test_pinned_sha256(store, tmp_path, monkeypatch):
    store.put("t.pt", PAYLOAD)
    good = hashlib.sha256(PAYLOAD).hexdigest()
    wrong = "0" * 64
    with pytest.raises(remote.RemoteError, match=rf"{store.url('t.pt')} has sha256 {good}, but {wrong} is pinned"):
        remote.localize(store.url("t.pt") + f"#sha256={wrong}")
    assert not _cached_files(tmp_path) or not [f for f in _cached_files(tmp_path) if f.endswith("t.pt")]
    assert _read(remote.localize(store.url("t.pt") + f"#sha256={good}")) == PAYLOAD
    monkeypatch.setitem(remote.PINNED_SHA256, store.url("t.pt"), wrong)  # a released file's published digest
    with pytest.raises(remote.RemoteError, match=rf"{store.url('t.pt')} has sha256 {good}, but {wrong} is pinned"):
        remote.localize(store.url("t.pt"))  # the cached copy's recorded digest answers: no second download
    assert store.fetches("t.pt") == 2
    with pytest.raises(ValueError, match="#sha256=<64 hex digits>"):
        remote.localize(store.url("t.pt") + "#md5=abc")


def test_folder_is_mirrored_and_kept_in_step(store):
    for name, data in {"lat/manifest.json": b"{}", "lat/chunk_0.npy": b"a" * 100, "lat/sub/x.bin": b"b"}.items():
        store.put(name, data)
    folder = remote.localize(store.url("lat") + "/")
    files = {os.path.relpath(os.path.join(r, n), folder) for r, _, ns in os.walk(folder) for n in ns}
    assert files == {"manifest.json", "chunk_0.npy", os.path.join("sub", "x.bin")}
    assert _read(os.path.join(folder, "chunk_0.npy")) == b"a" * 100
    del store.blobs["lat/sub/x.bin"]
    store.put("lat/chunk_0.npy", b"c" * 100)
    assert remote.localize(store.url("lat")) == folder
    assert not os.path.exists(os.path.join(folder, "sub", "x.bin"))
    assert _read(os.path.join(folder, "chunk_0.npy")) == b"c" * 100
    assert store.fetches("lat/manifest.json") == 1 and store.fetches("lat/chunk_0.npy") == 2


def test_missing_blob_names_the_url(store):
    with pytest.raises(FileNotFoundError, match=r"--teacher https://pagodatest.*/nothing/here: no such file"):
        remote.localize(store.url("nothing/here"), flag="teacher")


def test_unreachable_host_names_the_url_and_a_local_path(store, monkeypatch):
    store.put("t.pt", PAYLOAD)
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(remote.ENDPOINT_ENV, dead)
    monkeypatch.setattr(remote, "_CONTEXT", None)
    monkeypatch.setattr(remote, "RETRIES", 1)
    with pytest.raises(remote.RemoteError, match=r"cannot reach https://pagodatest\S*/t\.pt .*pass the local path "
                                                 r"instead, e.g\. --model \./t\.pt"):
        remote.localize(store.url("t.pt"), flag="model")
    monkeypatch.setenv(remote.ENDPOINT_ENV, store.endpoint)  # fetched once while it was up ...
    monkeypatch.setattr(remote, "_CONTEXT", None)
    path = remote.localize(store.url("t.pt"))
    monkeypatch.setenv(remote.ENDPOINT_ENV, dead)  # ... the verified copy serves while it is down
    monkeypatch.setattr(remote, "_CONTEXT", None)
    assert remote.localize(store.url("t.pt")) == path


def test_unsupported_urls_and_remote_outputs_are_refused():
    with pytest.raises(ValueError, match="gs://BUCKET/..., az://ACCOUNT/CONTAINER/... or https://ACCOUNT"):
        remote.localize("https://example.com/model.pt")
    with pytest.raises(ValueError, match="--run_dir gs://b/run: outputs go to a local folder"):
        remote.refuse_remote_output("gs://b/run", flag="run_dir")
    remote.refuse_remote_output("runs/x", flag="run_dir")
    import sample
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--model", "x.pt", "--out_dir", "az://acct/c/samples"])
    assert exit_info.value.code == 2


def test_imagenet_recipes_start_from_the_released_teacher_url():
    recipes = ["encode_imagenet64.sh", "gdd_imagenet64.sh", "progressive_imagenet64.sh", "stage2_imagenet64.sh"]
    for recipe in recipes:
        with open(os.path.join(REPO, "commands", recipe)) as f:
            assert f"TEACHER=${{TEACHER:-{remote.TEACHER_URL}}}" in f.read(), recipe


def test_resolve_paths_fetches_input_flags_only(store):
    store.put("w.pth", b"w")

    class Args:
        teacher = store.url("w.pth")
        feature_weights = ("", store.url("w.pth"))
        data_dir = "bundled:mnist"
        seed = 3
    args = script_util.resolve_paths(Args())
    assert _read(args.teacher) == b"w" and args.feature_weights[0] == "" and args.feature_weights[1] == args.teacher
    assert args.data_dir == "bundled:mnist" and args.seed == 3


def test_scripts_stop_with_the_message_of_an_unusable_url(store):
    import sample
    with pytest.raises(SystemExit, match=r"^error: --model https://pagodatest\S*/gone\.pt: no such file or folder"):
        sample.main(["--model", store.url("gone.pt")])


def test_sample_script_from_a_url(store, tmp_path):
    """scripts/sample.py --model URL: the same samples as from the local file; a second run fetches nothing."""
    model = tiny_export(tmp_path / "gen" / "generator_ema0.99.pt", kind="generator")
    store.put("exports/generator_ema0.99.pt", _read(model))
    store.put("exports/generator_ema0.99.json", _read(model[:-3] + ".json"))
    import sample as script

    def sample(source, out):
        try:
            script.main(["--model", source, "--out_dir", str(tmp_path / out), "--num_samples", "6", "--chunk_size",
                         "3"])
        finally:
            logger.configure(None)
        with np.load(tmp_path / out / "samples_6x8x8x3.npz") as data:
            return data["arr_0"], data["arr_1"]

    local = sample(model, "local")
    for out in ("remote1", "remote2"):
        images, labels = sample(store.url("exports/generator_ema0.99.pt"), out)
        np.testing.assert_array_equal(images, local[0])
        np.testing.assert_array_equal(labels, local[1])
    assert store.fetches("exports/generator_ema0.99.pt") == 1 and store.fetches("exports/generator_ema0.99.json") == 1


@pytest.mark.slow
def test_stage2_from_remote_teacher_latents_and_data(store, tmp_path):
    """train.py --method pagoda with --init_from, --latent_dir and --data_dir remote: the same generator as from
    the local files."""
    data = tiny_dataset(tmp_path / "data")
    teacher = tiny_export(tmp_path / "teacher" / "denoiser.pt")
    latents = encode_run(tmp_path / "latents", teacher, data)
    for path in (teacher, teacher[:-3] + ".json", data):
        store.put(os.path.relpath(path, tmp_path), _read(path))
    for name in os.listdir(latents):
        store.put(f"latents/{name}", _read(os.path.join(latents, name)))
    local = stage2_run(tmp_path / "local", teacher, latents, "--data_dir", data)
    fetched = stage2_run(tmp_path / "remote", store.url("teacher/denoiser.pt"), store.url("latents"),
                         "--data_dir", store.url("data/data.npz"))
    assert _read(fetched) == _read(local)
    assert store.fetches("teacher/denoiser.pt") == 1


def test_evaluator_reads_remote_batches(store, monkeypatch):
    """pagoda.evaluate hands the evaluator the local copies of batches given by URL; the evaluator alone (standalone,
    local files only) refuses a URL with a pointer to it."""
    from evaluations import evaluator
    from pagoda import evaluate
    for name, data in {"ref/ref.npz": b"r", "samples/a.npz": b"a", "samples/b.npz": b"b"}.items():
        store.put(name, data)
    seen = {}
    monkeypatch.setattr(evaluator, "evaluate", lambda ref, sample, **kw: seen.update(ref=ref, sample=sample, **kw))
    monkeypatch.setattr(evaluator, "format_report", lambda result: "")
    evaluate.main([store.url("ref/ref.npz"), store.url("samples"), "--cache_dir", ""])
    assert _read(seen["ref"]) == b"r" and sorted(os.listdir(seen["sample"])) == ["a.npz", "b.npz"]
    assert seen["inception"] is None
    with pytest.raises(SystemExit, match="--json gs://b/m.json: outputs go to a local file"):
        evaluate.main([store.url("ref/ref.npz"), store.url("samples"), "--json", "gs://b/m.json"])
    with pytest.raises(SystemExit, match=r"ref_batch .* is remote: run `python -m pagoda.evaluate`"):
        evaluator.main([store.url("ref/ref.npz"), store.url("samples")])


@pytest.mark.skipif(not azurite_binary(), reason="Azurite is not installed (npm install azurite; or set PAGODA_AZURITE)")
def test_against_azurite(tmp_path, monkeypatch):
    """The real emulator answers pagoda.remote as the stand-in does: file, sidecar, cache, pin, folder, missing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with Azurite(azurite_binary(), tmp_path / "azurite") as emulator:
        monkeypatch.setenv(remote.ENDPOINT_ENV, emulator.endpoint)
        monkeypatch.setattr(remote, "_CONTEXT", None)
        emulator.put("e/t.pt", PAYLOAD)
        emulator.put("e/t.json", b"{}")
        emulator.put("lat/a.npy", b"a" * 10)
        emulator.put("lat/sub/b.json", b"{}")
        path = remote.localize(emulator.url("e/t.pt"))
        assert _read(path) == PAYLOAD and _read(path[:-3] + ".json") == b"{}"
        assert remote.localize("az://devstoreaccount1/models/e/t.pt") == path
        with pytest.raises(remote.RemoteError, match="is pinned for it"):
            remote.localize(emulator.url("e/t.pt") + "#sha256=" + "0" * 64)
        folder = remote.localize(emulator.url("lat"))
        assert _read(os.path.join(folder, "sub", "b.json")) == b"{}"
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            remote.localize(emulator.url("nothing"))
    monkeypatch.setattr(remote, "_CONTEXT", None)
