"""Progress bars that suit where the output goes.

On a terminal, a live tqdm bar (redrawn in place). Anywhere else (CI, ``> log.txt``, ``nohup``)
a live bar would write every redraw into the log: one LeNet-5 epoch made about 470
carriage-return updates, a ``ternref compare`` several thousand. There the bar is off (tqdm's own
rule, ``disable=None``: off when the stream is not a TTY) and the callers print a few plain lines
instead: one per epoch in :func:`ternref.train.fit`, one per finished run in
:func:`ternref.compare.compare`. ``progress=False`` (``--quiet``) prints nothing at all.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(iterable=None, *, enabled: bool, file=None, **options) -> tqdm:
    """A tqdm bar that is live on a terminal, silent on a log, off when not ``enabled``."""
    return tqdm(
        iterable,
        disable=None if enabled else True,
        file=sys.stderr if file is None else file,
        **options,
    )


def progress_line(text: str, *, enabled: bool, file=None) -> None:
    """Print one line of progress without breaking a live bar; nothing when not ``enabled``."""
    if enabled:
        tqdm.write(text, file=sys.stdout if file is None else file)
