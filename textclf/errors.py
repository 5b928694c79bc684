from contextlib import contextmanager


class TextclfError(Exception):
    """A problem the user can fix (bad input, bad config). Printed as one message, no traceback."""


class Refused(SystemExit):
    """A TextclfError on its way out of a Hydra callback. Hydra turns an Exception raised by a callback into a warning
    and goes on, so a callback that must stop the command (the config check, before Hydra writes anything) raises
    this instead: the CLI prints the error once and exits 2 (uncaught, it exits 2 silently)."""

    def __init__(self, error: TextclfError):
        super().__init__(2)
        self.error = error


@contextmanager
def own_errors():
    """Let a TextclfError raised by a constructor reach the user as itself, not wrapped by hydra's instantiate."""
    from hydra.errors import InstantiationException

    try:
        yield
    except InstantiationException as e:
        if isinstance(e.__cause__, TextclfError):
            raise e.__cause__ from None
        raise
