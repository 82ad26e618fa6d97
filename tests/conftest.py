"""Shared test configuration: CPU only, one thread, deterministic, golden fixtures from tests/golden/compat."""

import os
from pathlib import Path

import pytest

# The suite is CPU-only by design: golden values, bit-exact reruns, and scripts run in subprocesses compared with
# in-process results. On a GPU node those scripts would pick CUDA and no longer match, so the GPUs are hidden from
# this process and from everything it starts (before torch initialises CUDA).
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# --precision auto reads the CPU's bf16 flags; the suite's golden values and bit-exact resumes are fp32 on every
# machine, so it (and every script it starts) sees a CPU without native bf16. tests/test_precision.py mocks the check.
os.environ["PAGODA_CPU_BF16"] = "0"
# Scripts and helpers started in subprocesses import this checkout's `pagoda` and `tests.helpers`, whichever copy
# of the package is installed.
REPO = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

import torch  # noqa: E402

# The released networks' key lists and the small official-network goldens (tests/golden/compat/README.md).
COMPAT = Path(__file__).resolve().parent / "golden" / "compat"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture
def compat_dir():
    return COMPAT


# pytest-xdist (`--dist loadfile`, commands/test.sh) hands whole files to its workers in collection order. These
# files each take minutes; collected first, they run beside the rest instead of alone at the end.
LONGEST_FIRST = ("test_quickstart.py", "test_compile.py", "test_bench.py", "test_recipes.py", "test_domain.py",
                 "test_probe_discriminator.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
