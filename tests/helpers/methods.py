"""A training method as the tests call a script: `.main(argv)` runs scripts/train.py --method NAME in this
process; GROUPS, PRESETS, CONSTRAINTS are the method module's."""

import functools
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import train  # noqa: E402

from pagoda import methods  # noqa: E402


@functools.lru_cache(maxsize=None)
def entry(name):
    spec = methods.get(name)
    return types.SimpleNamespace(__name__=f"train.{name}", main=functools.partial(train.main, method=name),
                                 GROUPS=spec.GROUPS, PRESETS=spec.PRESETS, CONSTRAINTS=spec.CONSTRAINTS, module=spec)
