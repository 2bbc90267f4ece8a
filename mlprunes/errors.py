"""The error every stage raises for bad input, importable without MLflow."""


class StageError(Exception):
    """Bad input to a stage or job: reported as one line, with a non-zero exit, before any run
    starts (or, for what only shows while running, with the run marked FAILED)."""


class Interrupted(BaseException):
    """A signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) asked the stage to stop. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it on the way
    out; each open run marks itself KILLED as it passes."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Claimed(Exception):
    """Another process's run already has this job (same key) and is alive: wait for it."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} already has this job")
        self.run_id = run_id
