"""Which failures reach the user as their own message and which are bugs (their type shown, the
traceback on the terminal): a ValueError counts as bad input only when our code raised it."""
from __future__ import annotations

import numpy as np
import pytest

from app.errors import UserFacingError, describe_error, is_expected
from engine.io import VolumeIOError
from engine.model.config import preset


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_the_projects_own_messages_are_expected_and_shown_as_written():
    for exc in (_raised(lambda: preset("no-such-preset")),
                VolumeIOError("/d/x.nii", "truncated"),
                UserFacingError("the model folder is empty"),
                OSError(28, "No space left on device", "/out/x.nii.gz"), MemoryError()):
        assert is_expected(exc), exc
    assert describe_error(_raised(lambda: preset("no-such-preset"))).startswith("unknown model preset")
    assert describe_error(OSError(28, "No space left on device", "/out/x.nii.gz")) == \
        "/out/x.nii.gz: No space left on device"


def test_a_value_error_from_inside_a_library_is_a_bug_and_says_its_type():
    bug = _raised(lambda: np.zeros(3) + np.zeros(4))
    assert isinstance(bug, ValueError) and not is_expected(bug)
    assert describe_error(bug).startswith("ValueError: operands could not be broadcast")
    assert not is_expected(KeyError("spacing")) and describe_error(KeyError("spacing")) == "KeyError: 'spacing'"
