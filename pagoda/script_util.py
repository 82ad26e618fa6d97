"""Flags and configuration: flag groups of `Flag` records -> argparse, presets, --dry_run, config.json.

Scripts turn flags into explicit constructor arguments here (`args_to_dict(args, group.keys())`); no
argparse namespace goes further into pagoda/. A misspelled flag is an error (no abbreviations either).
"""

import argparse
import contextlib
import dataclasses
import json
import math
import numbers
import os
import subprocess
import sys
import time

from . import checkpoint, dist_util, logger, remote, run_lock


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def _parse_tuple(kind):
    """'1,2,3' -> (1, 2, 3); '' -> (). String lists keep empty entries so 'a,,c' stays aligned with a
    companion list (e.g. --feature_weights ,path.pth for the second of two --feature_networks)."""
    def parse(v):
        if isinstance(v, (list, tuple)):
            return tuple(v)
        text = str(v).replace(" ", "")
        if not text:
            return ()
        return tuple(kind(x) for x in text.split(",") if x != "" or kind is str)
    return parse


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line setting, declared once: its default, its --help text, the checks its final value must pass
    (a check or a list of them, see below) and how a resumed run may change it (RESUME_CLASSES)."""
    default: object
    help: str
    check: object = None
    resume: str = "guarded"

    def __post_init__(self):
        if not self.help.strip():
            raise ValueError("a Flag needs help text")
        if self.resume not in RESUME_CLASSES:
            raise ValueError(f"resume must be free, fixed or guarded, got {self.resume!r}")


def defaults(group):
    """{flag: default} of a flag group."""
    return {key: flag.default for key, flag in group.items()}


def group_checks(groups):
    """{flag: checks} declared on the Flags of `groups` ({title: group})."""
    return {key: flag.check for group in groups.values() for key, flag in group.items() if flag.check is not None}


def resume_classes(groups):
    """{flag: resume class} of the Flags of `groups` ({title: group})."""
    return {key: flag.resume for group in groups.values() for key, flag in group.items()}


def with_defaults(group, **changes):
    """`group` with other defaults: a plain value replaces the default of the Flag of that name (its help, check and
    resume class stay), a Flag adds a flag or replaces one whole (a method's own meaning of a shared name)."""
    unknown = sorted(k for k, v in changes.items() if k not in group and not isinstance(v, Flag))
    if unknown:
        raise ValueError(f"{unknown}: not flags of this group; a new flag must be a Flag with help text")
    return {**group, **{k: v if isinstance(v, Flag) else dataclasses.replace(group[k], default=v)
                        for k, v in changes.items()}}


def add_dict_to_argparser(parser, group, title=None):
    """One `--key` per Flag, typed by its default (bools take true/false, tuples take 1,2,3), its help in --help."""
    target = parser.add_argument_group(title) if title else parser
    for key, flag in group.items():
        if not isinstance(flag, Flag):
            raise ValueError(f"--{key} is declared as {flag!r}, not as a script_util.Flag with its help text")
        value = flag.default
        if isinstance(value, bool):
            kind = str2bool
        elif isinstance(value, tuple):
            kind = _parse_tuple(type(value[0]) if value else str)
        elif value is None:
            kind = str
        else:
            kind = type(value)
        metavar = "BOOL" if kind is str2bool else "LIST" if isinstance(value, tuple) else kind.__name__.upper()
        target.add_argument(f"--{key}", default=value, type=kind, help=flag.help, metavar=metavar)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's own lines (usage examples) and shows every flag's default."""


def create_parser(groups, *, description, presets=None, constraints=None):
    """`groups`: {group title: {flag: Flag}}. Adds --preset (if presets), --dry_run. The Flags' checks and
    `constraints` (see check_flags; relations between flags) are checked by parse_args on the final values, presets
    included. `parser.resume_classes`: {flag: class} for write_config."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False, formatter_class=_HelpFormatter)
    seen = {}
    for title, group in groups.items():
        for key in group:
            if key in seen:
                raise ValueError(f"flag --{key} is defined in both {seen[key]!r} and {title!r}")
            seen[key] = title
        add_dict_to_argparser(parser, group, title=title)
    if presets:
        parser.add_argument("--preset", default=None, choices=sorted(presets),
                            help="named defaults; explicit flags override them")
    parser.add_argument("--dry_run", action="store_true", help="print the resolved config and exit")
    unknown = sorted(f for key in (constraints or {}) for f in ((key,) if isinstance(key, str) else key)
                     if f not in seen)
    if unknown:
        raise ValueError(f"constraints name flags that do not exist: {unknown}")
    declared = group_checks(groups)
    twice = sorted(set(declared) & set(constraints or {}))
    if twice:
        raise ValueError(f"flags checked both on their Flag and in constraints: {twice}")
    parser.constraints = {**declared, **(constraints or {})}
    parser.resume_classes = dict(resume_classes(groups), **({"preset": "free"} if presets else {}))
    return parser


def parse_args(parser, presets=None, argv=None):
    """Parse with presets: a preset replaces the defaults, flags given explicitly win over both."""
    argv = sys.argv[1:] if argv is None else argv
    if presets:
        pre, _ = parser.parse_known_args(argv)
        if pre.preset:
            dests = {a.dest for a in parser._actions}
            unknown = sorted(k for k in presets[pre.preset] if k not in dests)
            if unknown:
                raise ValueError(f"preset {pre.preset!r} sets unknown keys {unknown}")
            parser.set_defaults(**presets[pre.preset])
    args = parser.parse_args(argv)
    for action in parser._actions:  # defaults set by presets bypass `type`: normalise tuples and bools
        value = getattr(args, action.dest, None)
        if isinstance(value, list):
            setattr(args, action.dest, tuple(value))
    check_flags(parser, args, getattr(parser, "constraints", {}))
    for flag in OUTPUT_PATH_FLAGS:
        try:
            remote.refuse_remote_output(getattr(args, flag, ""), flag=flag)
        except ValueError as exc:
            parser.error(str(exc))
    return args


# Flags that name an input file or folder (any script): a remote value (gs://, az://, Azure blob https://) is
# fetched into the local cache by resolve_paths. Flags that name an output folder are refused when remote.
INPUT_PATH_FLAGS = ("init_from", "teacher", "model", "generator", "encoder_path", "data_dir", "heldout_dir",
                    "latent_dir", "guided_pairs", "input", "classifier_data", "feature_weights", "inception")
OUTPUT_PATH_FLAGS = ("run_dir", "out_dir", "out")


def resolve_paths(args):
    """Replace every remote input flag of `args` by its local copy (pagoda.remote.localize: fetched once, then
    read from the cache). Called after --dry_run, so a dry run fetches nothing. A URL that cannot be used (missing,
    unreachable, failing its checks) ends the script with its message (exit 1)."""
    try:
        for flag in INPUT_PATH_FLAGS:
            value = getattr(args, flag, None)
            if isinstance(value, tuple):
                setattr(args, flag, tuple(remote.localize(v, flag=flag) for v in value))
            elif isinstance(value, str):
                setattr(args, flag, remote.localize(value, flag=flag))
    except (remote.RemoteError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    return args


# -- parse-time checks -------------------------------------------------------------------------------------------
# A check takes a flag's value and returns None when it is valid, else what the value must be. A Flag carries one
# or more checks on its own value; a CONSTRAINTS table keyed by a tuple of flags checks their values as a tuple
# (relations between flags). A zero batch or an unknown storage type then stops at parse time with an
# argparse error naming the flag, not with a ZeroDivisionError (or a silent default) deep inside a run.

def _finite_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low):
    return lambda v: None if _finite_number(v) and v >= low else f"must be a number >= {low}"


def greater_than(low):
    return lambda v: None if _finite_number(v) and v > low else f"must be a number > {low}"


def zero_or_at_least(low):
    """0 (off, or "the default") or a number >= low."""
    return lambda v: None if _finite_number(v) and (v == 0 or v >= low) else f"must be 0 or a number >= {low}"


def in_range(low, high, *, high_included=False):
    """low <= v < high (or <= high)."""
    def check(v):
        ok = _finite_number(v) and low <= v and (v <= high if high_included else v < high)
        return None if ok else f"must be in [{low}, {high}{']' if high_included else ')'}"
    return check


def finite(v):
    return None if _finite_number(v) else "must be a finite number"


def one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def each(check, *, nonempty=False, distinct=False):
    """`check` on every entry of a list flag; optionally at least one entry, and no entry twice."""
    def check_all(values):
        if nonempty and not values:
            return "needs at least one value"
        if distinct and len(set(values)) != len(values):
            return "must not repeat a value"
        problems = [check(v) for v in values]
        bad = [(v, p) for v, p in zip(values, problems) if p]
        return f"entry {bad[0][0]!r} {bad[0][1]}" if bad else None
    return check_all


def as_number(check):
    """`check` on a text value read as a number (list flags with an empty default parse their entries as text)."""
    def check_text(v):
        try:
            number = float(v)
        except (TypeError, ValueError):
            return "must be a number"
        return check(number)
    return check_text


def increasing(values):
    """For a tuple key (low_flag, high_flag): low < high."""
    return None if values[0] < values[1] else "the first must be smaller than the second"


def check_flags(parser, args, constraints):
    """parser.error (exit 2, naming the flags) on the first value that fails its checks."""
    for key, checks in constraints.items():
        flags = (key,) if isinstance(key, str) else tuple(key)
        values = tuple(getattr(args, f) for f in flags)
        value = values[0] if isinstance(key, str) else values
        for check in (checks if isinstance(checks, list) else [checks]):
            problem = check(value)
            if problem:
                shown = " ".join(f"--{f} {_show(v)}" for f, v in zip(flags, values))
                parser.error(f"invalid {shown}: {problem}")


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parse_cli(groups, argv=None, *, description, constraints=None, presets=None, required=None):
    """Every script's preamble: the parser of `groups`, parsed with presets and checked, --dry_run, remote inputs
    fetched (resolve_paths), then each flag of `required` ({flag: what to give}) an argparse error (exit 2) when it
    is empty. Returns (parser, args)."""
    parser = create_parser(groups, description=description, presets=presets, constraints=constraints)
    args = parse_args(parser, presets, argv)
    handle_dry_run(args)
    resolve_paths(args)
    missing = [f"--{flag} ({what})" for flag, what in (required or {}).items() if not getattr(args, flag)]
    if missing:
        parser.error(f"required: {'; '.join(missing)}")
    return parser, args


@contextlib.contextmanager
def locked_job(folder, what, log_formats=("csv",)):
    """How every writing job starts: its processes joined (MPI or torchrun), `folder` locked against other jobs
    (run_lock), then the log opened in it, so a refused job writes nothing. Yields the device."""
    device = dist_util.setup_dist()
    with run_lock.hold(folder, what=what):
        logger.configure(folder, formats=log_formats)
        yield device


def resolved_config(args):
    config = {k: v for k, v in vars(args).items() if k != "dry_run"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=here, stderr=subprocess.DEVNULL,
                                       text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def handle_dry_run(args):
    """`--dry_run`: print the resolved config as JSON and exit 0."""
    if args.dry_run:
        print(json.dumps(resolved_config(args), indent=1, sort_keys=True))
        sys.exit(0)


# How a resumed run may differ from the run its checkpoints were made with, by config.json key: each Flag says its
# own class, and whatever writes a record into config.json says the class of its keys. "free": budget, cadence and
# resources, which change when and how fast, not what is trained. "fixed": what the checkpoint's tensors are shaped
# by (architecture, EMA rates, trainable set, players) and the data they were trained on; a new --run_dir is the way
# to change them. "guarded" (learning rates, batch sizes, loss weights, seeds, precision, --init_from, ...; also any
# key of unknown class): refused unless --allow_config_change.
RESUME_CLASSES = ("free", "fixed", "guarded")
# The keys write_config adds itself.
WRITTEN_CLASSES = {"git_commit": "free", "world_size": "free"}
# Flags added after runs were recorded, with the value that reproduces the behaviour of a run whose config.json
# predates them: a resume compares against it, so such a run resumes with the default and refuses another value.
ADDED_FLAGS = {"d_norm": "batch", "feature_resolution": 0, "diffaug": True, "r1_interval": 16}
# Flags renamed after runs were recorded: a config.json's old key is read as the new flag, its value translated.
RENAMED_FLAGS = {"lr_decay": ("lr_schedule", {True: "linear", False: "constant"})}
# Flags removed after runs were recorded, with the value under which such a run trained as this code trains: a run
# recorded with another value (stage 2's guided pairs, now `--method guidance`) cannot resume.
REMOVED_FLAGS = {"guided_pairs": "", "guided_gan": False}
# Guarded keys that only shape a fresh run's initial weights: after a resume the checkpoint's weights stand.
INIT_ONLY = ("init_from", "refit_head", "feature_seed")
HISTORY_FILE = "config_history.jsonl"


class ConfigChangeError(ValueError):
    """Resuming a run with settings its checkpoints were not made with."""


def flag_class(key, classes):
    """The class of a config.json key in `classes` ({key: class}); an entry of a nested record ("unet.dropout")
    takes its own class when `classes` names it, else the record's ("unet")."""
    return classes.get(key) or classes.get(key.split(".", 1)[0], "guarded")


def config_changes(recorded, requested, classes):
    """Every setting that differs, as (key, old, new, class), keys sorted. Nested records (e.g. the generator's
    architecture) are compared key by key ("generator.model_channels"); top-level keys missing on either side (a
    config.json written before a flag existed) are not compared, except the ADDED_FLAGS, which a recorded config
    without them holds at their value from before. RENAMED_FLAGS are compared under their new names; a REMOVED_FLAGS
    key recorded at another value than its table's is a fixed change."""
    recorded = {**{k: v for k, v in ADDED_FLAGS.items() if k in requested}, **_renamed(recorded)}
    changes = [(key, recorded[key], "<removed>", "fixed") for key, value in sorted(REMOVED_FLAGS.items())
               if key in recorded and key not in requested and recorded[key] != value]
    for top in sorted(set(recorded) & set(requested)):
        old, new = _flatten(top, recorded[top]), _flatten(top, requested[top])
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                changes.append((key, old.get(key, "<absent>"), new.get(key, "<absent>"), flag_class(key, classes)))
    if _same_dataset(recorded, requested):  # a dataset is known by its digest; where it is installed may change
        changes = [c[:3] + ("free",) if c[0] in DATASET_LOCATION else c for c in changes]
    return sorted(changes, key=lambda change: change[0])


def _renamed(recorded):
    """`recorded` with the RENAMED_FLAGS under their new names and values."""
    out = dict(recorded)
    for old, (new, values) in RENAMED_FLAGS.items():
        if old in out and new not in out:
            value = out.pop(old)
            out[new] = values.get(value, value)
    return out


# Where a dataset was read from (a bundled dataset's file inside the installed package): informative only when the
# dataset's digest is recorded and unchanged, so a moved virtual environment or data folder resumes.
DATASET_LOCATION = ("dataset", "dataset_identity.origin")


def _same_dataset(recorded, requested):
    digests = [(c.get("dataset_identity") or {}).get("digest") if isinstance(c.get("dataset_identity"), dict)
               else None for c in (recorded, requested)]
    return digests[0] is not None and digests[0] == digests[1]


def _flatten(prefix, value):
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out.update(_flatten(f"{prefix}.{k}", v))
    return out


def check_resume(recorded, requested, *, allow_change, flags, classes, run_dir):
    """Raise ConfigChangeError naming every refused change (old -> new) unless only free or, with `allow_change`,
    guarded settings differ. `flags`: the keys that are command-line flags (shown as --key); `classes`: {key: class}
    (flag_class). Returns the changes."""
    changes = config_changes(recorded, requested, classes)
    fixed = [c for c in changes if c[3] == "fixed"]
    guarded = [c for c in changes if c[3] == "guarded"]
    if not fixed and (allow_change or not guarded):
        return changes
    lines = [f"cannot resume {run_dir} with these settings: its checkpoints were made with those in its "
             f"config.json (left as it is)"]
    if fixed:
        lines.append("  architecture or data changes (never allowed in place; use a new --run_dir):")
        lines += [f"    {_name(c[0], flags)}: {c[1]!r} -> {c[2]!r}" for c in fixed]
    if guarded and not allow_change:
        lines.append("  other changes (pass --allow_config_change true to continue with the new values):")
        lines += [f"    {_name(c[0], flags)}: {c[1]!r} -> {c[2]!r}{_KEY_NOTES.get(c[0].split('.')[0], '')}"
                  for c in guarded]
    raise ConfigChangeError("\n".join(lines))


# Why a record key that is no flag is guarded, shown beside its refused change.
_KEY_NOTES = {"lr_anneal": " (the learning-rate anneal's length in optimiser steps, fixed when the run was "
                                 "created; allowing the change rebuilds the anneal for the new --total_steps, so the "
                                 "rate rises again, and the result differs from a run made that long at once)"}


def _name(key, flags):
    return f"--{key}" if key in flags else key


def write_config(run_dir, args, *, classes, allow_change=False, **extra):
    """check_config, then record the result at once (see check_config)."""
    checked = check_config(run_dir, args, classes=classes, allow_change=allow_change, **extra)
    checked.write()
    return checked.config


@dataclasses.dataclass
class CheckedConfig:
    """A run's settings that passed check_config; `write()` records them (rank 0) once the data and the model have
    passed their own checks too, so that a refused command never leaves its settings in config.json."""
    run_dir: str
    config: dict
    changes: list
    flags: set
    classes: dict
    newest_state: object = None
    unchecked: bool = False  # training states but no config.json

    def check_state_record(self, recorded, *, allow_change):
        """Without config.json, check against `recorded`, the settings the newest training state carries, so that
        deleting config.json bypasses nothing. ConfigChangeError (on every rank: each loaded the state) if refused."""
        if not self.unchecked or not recorded:
            return
        self.changes = check_resume(recorded, self.config, allow_change=allow_change, flags=self.flags,
                                    classes=self.classes, run_dir=self.run_dir)
        logger.log(f"{self.run_dir} has no config.json: the settings were checked against those its newest training "
                   "state carries")

    def write(self):
        if not dist_util.is_main():
            return
        if self.changes:
            _log_changes(self.run_dir, self.changes, self.flags, newest_state=self.newest_state)
        checkpoint.atomic_write_text(json.dumps(self.config, indent=1, sort_keys=True),
                                     os.path.join(self.run_dir, "config.json"))


def check_config(run_dir, args, *, classes, allow_change=False, **extra):
    """The run's config (resolved flags, git commit, world size and anything in `extra`), checked but not written.

    When the run resumes (run_dir holds a training state) the settings are checked against the recorded config.json
    (check_resume, by `classes`: {key: class} of the flags and of the `extra` records; the parser's `resume_classes`
    hold the flags'); a refusal raises ConfigChangeError on every rank. CheckedConfig.write() records the config and
    appends accepted changes to config_history.jsonl.
    """
    config = resolved_config(args)
    config.update(extra, git_commit=git_commit(), world_size=dist_util.get_world_size())
    config = json.loads(json.dumps(config, default=str))  # tuples -> lists etc., as the recorded file holds them
    flags = set(vars(args))
    classes = {**WRITTEN_CLASSES, **classes}
    outcome = None
    if dist_util.is_main():
        try:
            outcome = ("ok",) + _check_recorded(run_dir, config, allow_change=allow_change, flags=flags,
                                                classes=classes)
        except ConfigChangeError as exc:
            outcome = ("refused", str(exc))
    outcome = dist_util.broadcast_object(outcome)
    if outcome[0] == "refused":
        raise ConfigChangeError(outcome[1])
    return CheckedConfig(run_dir, config, outcome[1], flags, classes, outcome[2], unchecked=outcome[3])


def _check_recorded(run_dir, config, *, allow_change, flags, classes):
    """(accepted changes, newest state's step or None, whether config.json was missing beside training states)
    against run_dir's config.json; ConfigChangeError if refused."""
    path = os.path.join(run_dir, "config.json")
    states = checkpoint.CheckpointManager(run_dir).states()
    if states and os.path.exists(path):
        with open(path) as f:
            try:
                recorded = json.load(f)
            except json.JSONDecodeError as exc:
                raise ConfigChangeError(f"{path} is not valid JSON ({exc}); it records the settings of the run's "
                                        f"checkpoints: restore it, or use a new --run_dir") from None
        changes = check_resume(recorded, config, allow_change=allow_change, flags=flags, classes=classes,
                               run_dir=run_dir)
        return changes, states[0][0], False
    return [], states[0][0] if states else None, bool(states)


def _log_changes(run_dir, changes, flags, *, newest_state):
    lines = [f"settings changed on resume (newest state: step {newest_state}):"]
    for key, old, new, kind in changes:
        note = " (no effect: the checkpoint's weights stand)" if key in INIT_ONLY else ""
        lines.append(f"  {_name(key, flags)}: {old!r} -> {new!r} [{kind}]{note}")
    logger.log("\n".join(lines))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "newest_state": newest_state,
             "changes": [{"key": k, "old": o, "new": n, "class": c} for k, o, n, c in changes]}
    with open(os.path.join(run_dir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
