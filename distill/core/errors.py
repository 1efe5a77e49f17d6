"""Errors that the CLI turns into one line on stderr and an exit code."""


class DistillError(RuntimeError):
    """A failure the user can act on; the CLI prints it on one line and exits with `exit_code`."""

    exit_code = 1


class DistillInputError(DistillError, ValueError):
    """Bad input: a recipe key, a data file or row, or a path. Exit code 2."""

    exit_code = 2
