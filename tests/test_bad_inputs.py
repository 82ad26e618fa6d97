"""Invalid inputs are refused with a message naming the flag or file (and what to do), never a crash deep inside a
run or a silent result. Each case: the command or call, and the asserted message or exit code."""

import pytest

from evaluations import domain, evaluator
from pagoda import script_util
from scripts import (compare, encode, make_reference, quickstart_report, sample, train_pagoda, train_teacher,
                     upsample_npz)


# -- numeric flags, at parse time --------------------------------------------------------------------------------
FLAG_CASES = [
    (encode, ["--chunk_size", "0"], "invalid --chunk_size 0: must be a number >= 1"),
    (encode, ["--batch_size", "-2"], "invalid --batch_size -2: must be a number >= 1"),
    (encode, ["--image_size", "-8"], "invalid --image_size -8: must be a number >= 0"),
    (encode, ["--num_steps", "1"], "invalid --num_steps 1: must be a number >= 2"),
    (encode, ["--flips", "0,0"], "invalid --flips 0,0: must not repeat a value"),
    (encode, ["--flips", "2"], "invalid --flips 2: entry 2 must be one of 0, 1"),
    (encode, ["--storage", "fp61"], "invalid --storage fp61: must be one of fp16, fp32"),
    (encode, ["--sigma_min", "1", "--sigma_max", "0.5"],
     "invalid --sigma_min 1.0 --sigma_max 0.5: the first must be smaller than the second"),
    (train_teacher, ["--global_batch_size", "0"], "invalid --global_batch_size 0: must be a number >= 1"),
    (train_teacher, ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (train_teacher, ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (train_teacher, ["--lr", "nan"], "invalid --lr nan: must be a number >= 0"),
    (train_teacher, ["--ema_rates", "0.999,1.0"], "invalid --ema_rates 0.999,1.0: entry 1.0 must be in [0, 1)"),
    (train_teacher, ["--channel_mult", ""], "invalid --channel_mult : needs at least one value"),
    (train_teacher, ["--preset", "mnist16", "--microbatch", "-1"], "invalid --microbatch -1: must be a number >= 0"),
    (train_pagoda, ["--total_steps", "0"], "invalid --total_steps 0: must be a number >= 1"),
    (train_pagoda, ["--grow_factor", "3"], "invalid --grow_factor 3: must be one of 1, 2, 4, 8"),
    (train_pagoda, ["--channel_mult_high", "1,x"], "invalid --channel_mult_high 1,x: entry 'x' must be a number"),
    (train_pagoda, ["--keep_checkpoints", "0"], "invalid --keep_checkpoints 0: must be a number >= 1"),
    (sample, ["--num_samples", "0"], "invalid --num_samples 0: must be a number >= 1"),
    (sample, ["--chunk_size", "0"], "invalid --chunk_size 0: must be a number >= 1"),
    (sample, ["--batch_size", "0"], "invalid --batch_size 0: must be a number >= 1"),
    (sample, ["--labels", "zipf"], "invalid --labels zipf: must be one of uniform, balanced"),
    (compare, ["--num_samples", "1"], "invalid --num_samples 1: must be a number >= 2"),
    (make_reference, ["--num_images", "0"], "invalid --num_images 0: must be a number >= 1"),
    (upsample_npz, ["--image_size", "0"], "invalid --image_size 0: must be a number >= 1"),
    (quickstart_report, ["--speed_batch", "0"], "invalid --speed_batch 0: must be a number >= 1"),
    (domain, ["--epochs", "0"], "invalid --epochs 0: must be a number >= 1"),
]


@pytest.mark.parametrize("script, argv, message", FLAG_CASES,
                         ids=[f"{s.__name__.split('.')[-1]}{a[0]}" for s, a, _ in FLAG_CASES])
def test_data_invalid_flag_values_stop_at_parse_time(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    assert f"error: {message}\n" in capsys.readouterr().err


def test_eval_evaluator_batch_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main(["ref.npz", "sample.npz", "--batch", "0"])
    assert exit_info.value.code == 2
    assert "argument --batch: must be an integer >= 1, got 0" in capsys.readouterr().err


def _numeric(value):
    if isinstance(value, tuple):
        return any(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("module", [encode, sample, train_teacher, train_pagoda, compare, make_reference,
                                    upsample_npz, quickstart_report, domain])
def test_data_every_numeric_flag_has_a_parse_time_check(module):
    groups = module._flag_defaults() if module is domain else module.GROUPS
    constraints = domain.FLAG_CONSTRAINTS if module is domain else module.CONSTRAINTS
    checked = {f for key in constraints for f in ((key,) if isinstance(key, str) else key)}
    numeric = {k for defaults in groups.values() for k, v in defaults.items() if _numeric(v)}
    assert numeric - checked == set()
    script_util.create_parser(groups, description="", constraints=constraints)  # names only existing flags


def test_data_constraint_on_an_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match=r"constraints name flags that do not exist: \['batch'\]"):
        script_util.create_parser({"g": {"batch_size": 1}}, description="", constraints={"batch": int})
