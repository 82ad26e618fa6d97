"""Invalid inputs are refused with a message that names what is wrong (each case: the call and its exact error)."""

import pytest

from pagoda import checkpoint


# -- checkpoint retention ------------------------------------------------------------------------------------
def test_keeping_no_training_state_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^keep_checkpoints must be >= 1 \(the newest readable state is always "
                                         r"kept\), got 0$"):
        checkpoint.CheckpointManager(str(tmp_path), keep=0)
