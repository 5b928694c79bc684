class TextclfError(Exception):
    """A problem the user can fix (bad input, bad config). Printed as one message, no traceback."""
