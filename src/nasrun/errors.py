"""User-facing errors: one line, what went wrong and how to fix it, exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, genotype, files). The CLI prints it as one line and exits 2."""


class Interrupted(Exception):
    """The run received SIGTERM/SIGUSR1, wrote a checkpoint and stopped; rerun the command to resume."""
