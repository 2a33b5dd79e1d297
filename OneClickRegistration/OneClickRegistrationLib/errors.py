"""Exceptions shared by every part of the library.

They are deliberately few: a caller (the CLI, the Slicer logic, a batch script)
needs to tell "your input is wrong, here is how to fix it" from "the user
pressed Cancel" from a genuine bug.
"""


class InvalidInputError(ValueError):
    """An input image, mask, table or option cannot be used.

    The message names the problem and the fix, in one line, so the CLI and
    the Slicer widget can show it as is.
    """


class RegistrationCancelled(Exception):
    """Raised from a progress callback to stop a registration early.

    The library never catches it: it propagates to the caller as itself,
    whatever step or stage is running (`register` reports progress several
    times a second in each), and nothing the caller passed in has been
    modified.  The command line raises it at the next progress message after
    SIGINT or SIGTERM.  The library installs no signal handler, so Ctrl-C in a
    Python console stays a KeyboardInterrupt.
    """
