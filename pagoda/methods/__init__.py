"""Training methods, one module each: its Objective, flag groups (GROUPS of script_util.Flag records), PRESETS,
CONSTRAINTS (relations between flags) and build(config, device) -> common.Run. `scripts/train.py --method NAME`
trains any of them in the one TrainLoop.

Adding a method adds a module here, its name below, and a recipe in commands/.
"""

import importlib

METHODS = ("diffusion", "pagoda", "gdd", "progressive", "encoder", "guidance")


def get(name):
    """The module of method `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")
