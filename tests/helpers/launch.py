"""Finding the MPI launcher for the multi-process tests."""

import os
import shutil
import sys

import pytest


def mpiexec():
    """mpiexec beside this interpreter (the `mpich` wheel of requirements.txt), else on PATH; a clear failure if
    neither exists, rather than a TypeError from subprocess."""
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found: install the `mpich` PyPI package (it is in requirements.txt)")
    return found
