"""One out-of-range policy for every protocol with a fixed input range.

Fixed-point and CKKS protocols size their modulus for coordinates in ``[-clip, clip]`` (the
protocol option ``clip``). What happens to a coordinate outside it is one option,
``out_of_range``, shared by all of them and checked here:

* ``"refuse"`` (default): the client refuses to encode the update,
  :class:`~crypto.errors.EncodingError` naming the largest value, how many coordinates are
  outside and the fix. Nothing is changed silently.
* ``"clip"``: coordinates are clipped to ``[-clip, clip]`` before encoding, on purpose; the
  client session records how many (``ClientSession.clipped_coordinates``).

``plain`` sends float32 values and has no range, hence no such option.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import EncodingError, ParameterError

log = logging.getLogger(__name__)

OPTION = "out_of_range"
REFUSE, CLIP = "refuse", "clip"
POLICIES = (REFUSE, CLIP)


def policy(options: Mapping[str, Any]) -> str:
    """The validated ``out_of_range`` option (default ``"refuse"``)."""
    value = options.get(OPTION, REFUSE)
    if value not in POLICIES:
        raise ParameterError(
            f"out_of_range={value!r} is not a policy: use 'refuse' (the default: an update "
            "outside [-clip, clip] is an error) or 'clip' (clip it, explicitly)"
        )
    return str(value)


def enforce(
    vector: NDArray[Any], *, clip: float, policy: str, who: str
) -> tuple[NDArray[Any], int]:
    """``vector`` inside ``[-clip, clip]`` and the number of coordinates clipped to get there.

    Raises ``EncodingError`` for a coordinate outside the range under ``"refuse"``.
    """
    if vector.size == 0:
        return vector, 0
    lo, hi = float(np.min(vector)), float(np.max(vector))
    if -clip <= lo and hi <= clip:
        return vector, 0
    outside = int(np.count_nonzero(np.abs(vector) > clip))
    if policy == REFUSE:
        raise EncodingError(
            f"{who}'s update has {outside} of {vector.size} coordinates outside "
            f"[-{clip:g}, {clip:g}] (largest magnitude {max(-lo, hi):.6g}): clip or scale the "
            "update first, raise the protocol option 'clip', or set out_of_range = 'clip' to "
            "clip them explicitly"
        )
    log.info("%s: clipped %d of %d coordinates to [-%g, %g]", who, outside, vector.size, clip, clip)
    return np.clip(vector, -clip, clip), outside
