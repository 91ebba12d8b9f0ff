"""Progress lines for long host steps (the pruning probe, the sensitivity ranking, QAT's epochs).

Such a step can run for minutes on a large model; without a line the terminal looks hung. A ticker
says how far it got at most every ``every_s`` seconds, so short runs stay as quiet as before.
"""

from __future__ import annotations

import time
from typing import Callable

Say = Callable[[str], None]


def ticker(say: Say | None, label: str, total: int, unit: str, every_s: float = 10.0,
           clock: Callable[[], float] = time.monotonic) -> Callable[[int], None]:
    """``tick(done)``: says "<label>: done/total <unit>" when ``every_s`` has passed since the last line
    (or since the start); nothing when ``say`` is None."""
    last = [clock()]

    def tick(done: int) -> None:
        now = clock()
        if say is None or now - last[0] < every_s:
            return
        last[0] = now
        say(f"{label}: {done}/{total} {unit}")

    return tick
