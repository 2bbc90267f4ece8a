"""The error every stage raises for bad input, importable without MLflow."""


class StageError(Exception):
    """Bad input to a stage or job: reported as one line, with a non-zero exit, before any run
    starts (or, for what only shows while running, with the run marked FAILED)."""
