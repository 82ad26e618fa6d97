"""Flags and configuration: `*_defaults()` groups -> argparse, presets, --dry_run, config.json.

Scripts turn flags into explicit constructor arguments here (`args_to_dict(args, group.keys())`); no
argparse namespace goes further into pagoda/. A misspelled flag is an error (no abbreviations either).
"""

import argparse
import json
import math
import numbers
import os
import subprocess
import sys

from . import checkpoint, dist_util


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


def add_dict_to_argparser(parser, defaults, group=None):
    """One `--key` per entry, typed by its default (bools take true/false, tuples take 1,2,3)."""
    target = parser.add_argument_group(group) if group else parser
    for key, value in defaults.items():
        if isinstance(value, bool):
            kind = str2bool
        elif isinstance(value, tuple):
            kind = _parse_tuple(type(value[0]) if value else str)
        elif value is None:
            kind = str
        else:
            kind = type(value)
        target.add_argument(f"--{key}", default=value, type=kind, metavar=kind.__name__.upper()
                            if hasattr(kind, "__name__") else None)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


def create_parser(groups, *, description, presets=None, constraints=None):
    """`groups`: {group title: defaults dict}. Adds --preset (if presets), --dry_run. `constraints` (see
    check_flags) are checked by parse_args on the final values, presets included."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    seen = {}
    for title, defaults in groups.items():
        for key in defaults:
            if key in seen:
                raise ValueError(f"flag --{key} is defined in both {seen[key]!r} and {title!r}")
            seen[key] = title
        add_dict_to_argparser(parser, defaults, group=title)
    if presets:
        parser.add_argument("--preset", default=None, choices=sorted(presets),
                            help="named defaults; explicit flags override them")
    parser.add_argument("--dry_run", action="store_true", help="print the resolved config and exit")
    unknown = sorted(f for key in (constraints or {}) for f in ((key,) if isinstance(key, str) else key)
                     if f not in seen)
    if unknown:
        raise ValueError(f"constraints name flags that do not exist: {unknown}")
    parser.constraints = dict(constraints or {})
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
    return args


# -- parse-time checks -------------------------------------------------------------------------------------------
# A check takes a flag's value and returns None when it is valid, else what the value must be. Scripts list one
# or more checks per numeric flag in a CONSTRAINTS table; a key that is a tuple of flags gets their values as a
# tuple (relations between flags). A zero batch or an unknown storage type then stops at parse time with an
# argparse error naming the flag, not with a ZeroDivisionError (or a silent default) deep inside a run.

def _finite_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low):
    return lambda v: None if _finite_number(v) and v >= low else f"must be a number >= {low}"


def greater_than(low):
    return lambda v: None if _finite_number(v) and v > low else f"must be a number > {low}"


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


def write_config(run_dir, args, **extra):
    """Rank 0 writes config.json: resolved flags, git commit, world size and anything in `extra`."""
    config = resolved_config(args)
    config.update(extra, git_commit=git_commit(), world_size=dist_util.get_world_size())
    if dist_util.is_main():
        checkpoint.atomic_write_text(json.dumps(config, indent=1, sort_keys=True, default=str),
                                     os.path.join(run_dir, "config.json"))
    return config
