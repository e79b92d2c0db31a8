"""The console every command prints to (no torch import: the sweep launchers and the command line's checks use it)."""

import time

from rich.console import Console


class TeeConsole(Console):
    """The terminal console, also appending every printed line (markup stripped) to the current run's log
    (``<run dir>/<task>.log``, set by :meth:`nasrun.rundir.RunDir.start`)."""

    log_path = None

    def print(self, *objects, **kwargs):
        super().print(*objects, **kwargs)
        if self.log_path is not None and objects and all(isinstance(o, str) for o in objects):
            from rich.text import Text

            line = " ".join(Text.from_markup(o).plain for o in objects)
            with open(self.log_path, "a") as f:
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")


console = TeeConsole(stderr=True)


def is_main():
    """Not one of ranks 1… of a run over several processes (torch-free: :mod:`nasrun.distributed` is imported only by
    such runs, and only they can be anything but rank 0)."""
    import sys

    world = sys.modules.get("nasrun.distributed")
    return world is None or world.WORLD.main
