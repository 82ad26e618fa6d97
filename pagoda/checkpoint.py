"""Training states (atomic, resumable, the newest K readable kept) and network exports (state_dict + JSON sidecar).

A training state is everything needed to continue a run bit-exactly; an export is the one thing the next
stage, the sampler and the evaluator take: `<name>.pt` (a state_dict) beside `<name>.json` (what to build).
Every load uses weights_only=True and map_location="cpu".
"""

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile

import torch

from .faults import kill_point

STATE_PATTERN = re.compile(r"state_(\d{7,})\.pt$")


class WriteError(OSError):
    """A file could not be written; the message names the file and the cause."""


def _umask():
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def write_error(path, exc):
    """A WriteError naming `path` and why writing it failed: a full disk, a folder that is not writable, or what the
    writer said (torch reports a full disk as a RuntimeError "file write failed")."""
    folder = os.path.dirname(os.path.abspath(path))
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk is full ({os.strerror(code)})"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"the folder {folder} is not writable ({os.strerror(code)}: read-only, or owned by another user)"
    else:
        try:
            free = f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB are free there (a full disk is the usual cause)"
        except OSError:
            free = ""
        cause = f"{type(exc).__name__}: {exc}{free}"
    return WriteError(code or errno.EIO, f"could not write {path}: {cause}. Any earlier file of that name is "
                                         "unchanged; free space or fix the folder, then rerun the same command")


@contextlib.contextmanager
def naming_write_errors(path):
    """Turn any failure of the block that writes `path` into a WriteError naming it (see write_error)."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:
        raise write_error(path, exc) from exc


def _atomic_write(path, suffix, write):
    """write(file) into a temp file in the same folder, fsync, then os.replace: a crash never leaves a half-written
    file under the final name. The file gets the permissions the umask allows (mkstemp alone gives 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    with naming_write_errors(path):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def atomic_save(obj, path):
    """torch.save `obj` to `path` atomically (see _atomic_write)."""
    _atomic_write(path, ".pt", lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    _atomic_write(path, ".txt", lambda f: f.write(text.encode()))


def read_json_record(path):
    """The JSON record at `path`, or None when it is missing or damaged (the caller then redoes what it vouched for)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def torch_load(path):
    """The one way pagoda reads tensors from disk."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


# The layout of a training state. States written before the version existed hold the same layout and are read as
# version 1; a state of another version, or with other entries, is refused naming the file (never half-read).
STATE_FORMAT_VERSION = 1
STATE_KEYS = {"format_version", "step", "batches_drawn", "players", "objective", "rng", "rng_per_rank", "config"}
_REQUIRED_STATE_KEYS = STATE_KEYS - {"format_version", "rng_per_rank", "config"}
PLAYER_KEYS = {"model", "opt", "scaler", "ema", "opt_steps", "skipped_in_a_row", "skipped_total"}
_REQUIRED_PLAYER_KEYS = {"model", "opt", "scaler", "ema", "opt_steps"}


def check_state(state, path, *, players):
    """ValueError naming `path` unless `state` is a training state of this format with an entry for each of
    `players` (names) and no other."""
    def refuse(problem):
        raise ValueError(f"{path} is not a training state this code can resume: {problem}. Resume it with the pagoda "
                         "version that wrote it, or start a new --run_dir")
    if not isinstance(state, dict):
        refuse(f"it holds a {type(state).__name__}, not a dict")
    version = state.get("format_version", 1)
    if version != STATE_FORMAT_VERSION:
        refuse(f"its format version is {version!r}, this code reads version {STATE_FORMAT_VERSION}")
    missing, unknown = sorted(_REQUIRED_STATE_KEYS - set(state)), sorted(set(state) - STATE_KEYS)
    if missing or unknown:
        refuse(f"entries missing: {missing or 'none'}; unknown entries: {unknown or 'none'}")
    if not isinstance(state["players"], dict) or set(state["players"]) != set(players):
        refuse(f"it trains the networks {sorted(state['players'])}, this method trains {sorted(players)}")
    for name, entry in state["players"].items():
        missing = sorted(_REQUIRED_PLAYER_KEYS - set(entry))
        unknown = sorted(set(entry) - PLAYER_KEYS)
        if missing or unknown:
            refuse(f"network {name!r}: entries missing: {missing or 'none'}; unknown entries: {unknown or 'none'}")


class CheckpointManager:
    """`<run_dir>/checkpoints/state_<step>.pt` files, saved atomically. Retention keeps the newest `keep` states
    that were read back successfully: unreadable (e.g. truncated) files are never counted, so damaged newest files
    cannot push out the state a resume needs, and the newest readable state is never deleted. The price: each save
    reads its new file back once."""

    def __init__(self, run_dir, *, keep=3):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 (the newest readable state is always kept), got {keep}")
        self.folder = os.path.join(run_dir, "checkpoints")
        self.keep = keep
        self._checked = {}  # path -> (_stamp, loaded whole?): each version of a file is read once

    def path(self, step):
        return os.path.join(self.folder, f"state_{step:07d}.pt")

    def states(self):
        """Saved states as (step, path), newest first."""
        found = []
        for p in glob.glob(os.path.join(self.folder, "state_*.pt")):
            m = STATE_PATTERN.search(p)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found, reverse=True)

    def save(self, step, state, log=print):
        # Only this process writes here, one save at a time: a temp file present now is a killed save's leftover.
        for tmp in glob.glob(os.path.join(self.folder, ".tmp_*")):
            os.remove(tmp)
        atomic_save(state, self.path(step))
        self.prune(log=log)

    def prune(self, log=print):
        """Delete every state older than the newest `keep` readable ones. Unreadable states newer than those stay
        (not counted): the run overwrites each when it reaches its step again."""
        kept = 0
        for _, path in self.states():
            if kept >= self.keep:
                os.remove(path)
            elif self._readable(path, log):
                kept += 1

    def load_latest(self, log=print):
        """The newest state that loads; unreadable (e.g. truncated) files are reported and passed over."""
        return self.latest(log=log)[1]

    def latest(self, log=print):
        """(path, state) of the newest state that loads, or (None, None)."""
        for _, path in self.states():
            state = self._read(path, log)
            if state is not None:
                return path, state
        return None, None

    def _readable(self, path, log):
        stamp, ok = self._checked.get(path, (None, False))
        if stamp == _stamp(path):
            return ok
        return self._read(path, log) is not None

    def _read(self, path, log):
        """The state in `path`, or None if it does not load whole."""
        stamp = _stamp(path)
        try:
            state = torch_load(path)
        except Exception as exc:  # a truncated zip raises RuntimeError; be liberal, never count or resume from it
            log(f"warning: skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}")
            state = None
        self._checked[path] = (stamp, state is not None)
        return state


def _stamp(path):
    stat = os.stat(path)  # os.replace gives a rewritten state a new inode, even within one mtime tick
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


# -- exports -----------------------------------------------------------------------------------------------
# An export's sidecar carries `content_sha256`: a hash of its weights and of every other sidecar entry, computed
# once at export. A load recomputes it, so an edited sidecar (another sigma_data, another kind) or replaced
# weights are refused instead of silently building another model. Files without a sidecar (the released
# checkpoints) and sidecars written before the hash existed load as before.
CONTENT_HASH = "content_sha256"
_NUMBER = (int, float)
# A network's constructor config sits under its architecture's name: "unet" (pagoda.unet) or "dimr" (pagoda.dimr).
NETWORK_KEYS = ("unet", "dimr")
NETWORK = "network"
# Required entries and their JSON types, by kind (checked when a consumer names the kind it needs); NETWORK: one of
# NETWORK_KEYS, a dict.
SIDECAR_SCHEMAS = {
    "denoiser": {NETWORK: dict, "sigma_data": _NUMBER, "sigma_min": _NUMBER, "sigma_max": _NUMBER},
    "generator": {NETWORK: dict, "sigma_data": _NUMBER, "sigma_max": _NUMBER},
    "domain_classifier": {"config": dict, "settings": dict, "record": dict},
    # the amortised encoder E(x, y) -> z (pagoda.amortised_encoder): what it inverts is in the sidecar
    "encoder": {NETWORK: dict, "encoder_sigma": _NUMBER, "input_sigma": _NUMBER, "sigma_data": _NUMBER,
                "sigma_max": _NUMBER, "latent_settings": dict},
}
# Entries any sidecar may carry, and their types.
# output: what a generator's network output is ("raw" or "denoised", pagoda.generator);
# sigmas: the noise grid a distilled k-step denoiser samples on (k + 1 values, strictly decreasing, ending in 0);
# distilled_from: the content hash of the export it was distilled from.
GENERATOR_OUTPUTS = ("raw", "denoised")
# fp16_of: the content hash of the fp32 export whose weights an fp16 copy (the test fixtures) holds; a strict load
# checks names and shapes, and load_state_dict upcasts the fp16 tensors to the model's fp32 parameters.
_OPTIONAL = {"null_class": (int, type(None)), "teacher_sha256": str, "step": int, "ema_rate": _NUMBER,
             "output": str, "sigmas": list, "distilled_from": str, "fp16_of": str, CONTENT_HASH: str}


def grid_problem(sigmas):
    """What is wrong with a sampling grid `sigmas` (a list), or None: it must hold at least two finite numbers,
    strictly decreasing, the last one 0."""
    numbers = all(isinstance(s, _NUMBER) and not isinstance(s, bool) and math.isfinite(s) for s in sigmas)
    if len(sigmas) < 2 or not numbers:
        return "must be a list of at least two finite numbers"
    if any(a <= b for a, b in zip(sigmas[:-1], sigmas[1:])):
        return "must be strictly decreasing"
    if sigmas[-1] != 0:
        return "must end in 0"
    return None


def sidecar_path(path):
    return os.path.splitext(path)[0] + ".json"


def weights_digest(state_dict):
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _canonical(sidecar):
    """The sidecar as JSON reads it back (tuples as lists), without its hash."""
    return json.loads(json.dumps({k: v for k, v in sidecar.items() if k != CONTENT_HASH}))


def content_hash(state_dict, sidecar):
    text = json.dumps(_canonical(sidecar), sort_keys=True) + weights_digest(state_dict)
    return hashlib.sha256(text.encode()).hexdigest()


def export_network(state_dict, sidecar, path):
    """Write a plain state_dict and its sidecar (JSON, with the content hash) next to it, both atomically."""
    state_dict = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    sidecar = dict(_canonical(sidecar), **{CONTENT_HASH: content_hash(state_dict, sidecar)})
    validate_sidecar(sidecar, source=sidecar_path(path), kind=sidecar.get("kind"))
    atomic_save(state_dict, path)
    kill_point("export.weights_written")
    atomic_write_text(json.dumps(sidecar, indent=1, sort_keys=True), sidecar_path(path))


def export_mismatch(path, state_dict, sidecar):
    """None if export `path` holds exactly `state_dict` with `sidecar` (what export_network would write), else why
    not: missing, unreadable, another step, or other content."""
    expected = content_hash(state_dict, sidecar)
    side = sidecar_path(path)
    if not os.path.exists(path) or not os.path.exists(side):
        return f"missing ({path if not os.path.exists(path) else side})"
    try:
        with open(side) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as exc:
        return f"unreadable sidecar ({type(exc).__name__}: {exc})"
    if not isinstance(recorded, dict) or recorded.get(CONTENT_HASH) != expected:
        step = recorded.get("step") if isinstance(recorded, dict) else None
        return f"holds step {step}" if step != sidecar.get("step") else "holds other weights or settings"
    try:
        load_export(path)  # the weights against the sidecar's hash (a kill between the two writes)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def validate_sidecar(sidecar, *, source, kind=None):
    """ValueError naming the file and the entry unless the sidecar is a JSON object with a string 'kind', the
    optional entries have their types, and (given `kind`) it holds every entry that kind needs."""
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("kind"), str):
        raise ValueError(f"{source}: a sidecar must be a JSON object with a string 'kind'; re-export the network")
    required = dict(SIDECAR_SCHEMAS.get(kind, {})) if kind is not None else {}
    if required.pop(NETWORK, None) is not None:
        present = [key for key in NETWORK_KEYS if key in sidecar]
        if len(present) != 1:
            raise ValueError(f"{source}: a {kind!r} sidecar needs one entry 'unet' or 'dimr' (its network's "
                             f"configuration), found {present or 'neither'}; re-export the network")
        required[present[0]] = dict
    for key, types in {**_OPTIONAL, **required}.items():
        if key not in sidecar:
            if key in required:
                raise ValueError(f"{source}: a {kind!r} sidecar needs the entry {key!r}; re-export the network")
            continue
        value = sidecar[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ValueError(f"{source}: entry {key!r} must be {names}, got {type(value).__name__} {value!r}; "
                             "re-export the network")
    problem = grid_problem(sidecar["sigmas"]) if "sigmas" in sidecar else None
    if problem:
        raise ValueError(f"{source}: entry 'sigmas' {problem} (the grid a distilled denoiser samples on), got "
                         f"{sidecar['sigmas']!r}; re-export the network")
    if sidecar.get("output", "raw") not in GENERATOR_OUTPUTS:
        raise ValueError(f"{source}: entry 'output' must be one of {', '.join(GENERATOR_OUTPUTS)} (what the "
                         f"generator's network output is), got {sidecar['output']!r}; re-export the network")


def _article(word):
    return "an" if word[:1] in "aeiou" else "a"


def read_sidecar(path, *, expect_kind=None):
    """The sidecar of export `path`, or None when there is none. Invalid JSON, a malformed entry, another kind
    than `expect_kind` or a missing entry of that kind are ValueErrors naming the file."""
    side = sidecar_path(path)
    if not os.path.exists(side):
        return None
    try:
        with open(side) as f:
            sidecar = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{side} is not valid JSON ({exc}); it is the architecture sidecar of {path}: restore it "
                         "or re-export the network") from exc
    validate_sidecar(sidecar, source=side)
    if expect_kind is not None and sidecar["kind"] != expect_kind:
        raise ValueError(f"{path} is {_article(sidecar['kind'])} {sidecar['kind']!r} export, but "
                         f"{_article(expect_kind)} {expect_kind!r} is needed here")
    validate_sidecar(sidecar, source=side, kind=expect_kind)
    return sidecar


def load_export(path, *, expect_kind=None):
    """(state_dict, sidecar or None) of an export. A truncated or damaged file, and weights or a sidecar that no
    longer match the content hash written at export, are ValueErrors naming the file."""
    try:
        state_dict = torch_load(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError or UnpicklingError for damaged files
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or damaged: "
                         "copy or export it again") from exc
    sidecar = read_sidecar(path, expect_kind=expect_kind)
    if sidecar is not None and CONTENT_HASH in sidecar and isinstance(state_dict, dict):
        if content_hash(state_dict, sidecar) != sidecar[CONTENT_HASH]:
            raise ValueError(f"{path} and its sidecar {sidecar_path(path)} do not match the content hash written "
                             "at export: the sidecar was edited or the weights replaced; re-export the network")
    return state_dict, sidecar


def state_dict_mismatch(module, state_dict):
    """(missing keys, unexpected keys, shape mismatches as text) of `state_dict` against `module`'s own."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    return missing, unexpected, shapes


def describe_mismatch(missing, unexpected, shapes):
    """The counts and the first keys of each kind of state_dict_mismatch, for an error message."""
    return (f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape mismatches).\n"
            f"  missing keys: {_head(missing)}\n  unexpected keys: {_head(unexpected)}\n"
            f"  shape mismatches: {_head(shapes)}")


def load_state_dict_strict(module, state_dict, *, source):
    """Strict load whose error lists what is missing and unexpected (and shape mismatches), naming the file."""
    mismatch = state_dict_mismatch(module, state_dict)
    if any(mismatch):
        raise ValueError(f"{source} does not match the architecture being built {describe_mismatch(*mismatch)}")
    module.load_state_dict(state_dict, strict=True)
    return module


def _head(items, n=12):
    if not items:
        return "none"
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def capture_rng():
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return _rng_to_tensors(state)


def restore_rng(state):
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_to_python_state(state["python"]))
    np.random.set_state(_to_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# weights_only loading accepts tensors, lists, dicts and scalars only: store RNG states in those forms.
def _rng_to_tensors(state):
    out = dict(state)
    version, internal, gauss = state["python"]
    out["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return out


def _to_python_state(s):
    return (s[0], tuple(int(v) for v in s[1].tolist()), s[2])


def _to_numpy_state(s):
    import numpy as np

    return (s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4])
