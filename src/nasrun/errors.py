"""User-facing errors: one line, what went wrong and how to fix it, exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, genotype, files). The CLI prints it as one line and exits 2."""


class Interrupted(Exception):
    """The run received SIGINT/SIGTERM/SIGUSR1/SIGUSR2, wrote a checkpoint and stopped; rerun the command to resume.
    ``signal``: the signal's name (the exit code is 130 for SIGINT, else 3)."""

    def __init__(self, message, signal=None):
        super().__init__(message)
        self.signal = signal


def exit_code(signal_name):
    """The exit code of a run stopped by a signal: 130 for Ctrl-C (SIGINT), as a shell reports it, else 3."""
    return 130 if signal_name == "SIGINT" else 3


WRITE_ERRNOS = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is used up", "EROFS": "read-only file system",
                "EACCES": "permission denied", "EPERM": "operation not permitted"}


def write_error(exc):
    """The one-line message for an OSError from writing run files (full disk, read-only place), else None.

    Run files are written atomically, so such a failure never leaves a truncated checkpoint behind."""
    import errno

    name = errno.errorcode.get(getattr(exc, "errno", None) or 0)
    if not isinstance(exc, OSError) or name not in WRITE_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    return (f"cannot write{where}: {WRITE_ERRNOS[name]} ({exc.strerror or name}); files already written, the last "
            "checkpoint included, are intact: free space or choose a writable place (hydra.run.dir=...) and rerun "
            "the same command to resume")
