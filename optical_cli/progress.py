"""How long work reports its progress without knowing who shows it: a callback
``progress(done_now, total=None, description=None)``. The CLI passes its progress bar's ``advance``
(:func:`optical_cli.reports.console.progress_bar`); a script or a test passes anything, or nothing."""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]
