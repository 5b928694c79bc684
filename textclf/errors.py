from contextlib import contextmanager


class TextclfError(Exception):
    """A problem the user can fix (bad input, bad config). Printed as one message, no traceback."""


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
