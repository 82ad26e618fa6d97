"""A training method as the tests call a script: `.main(argv)` runs scripts/train.py --method NAME in this
process; GROUPS, PRESETS, CONSTRAINTS are the method module's."""

import functools
import types

import train

from pagoda import methods


@functools.lru_cache(maxsize=None)
def entry(name):
    spec = methods.get(name)
    return types.SimpleNamespace(__name__=f"train.{name}", main=functools.partial(train.main, method=name),
                                 GROUPS=spec.GROUPS, PRESETS=spec.PRESETS, CONSTRAINTS=spec.CONSTRAINTS, module=spec)
