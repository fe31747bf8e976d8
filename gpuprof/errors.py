"""The one exception type that carries a user-facing sentence."""


class GpuprofError(Exception):
    """A problem the user can fix or must know about, worded as one clear sentence.

    The CLI prints the message alone (no traceback) and exits non-zero.
    """


class NoGPUError(GpuprofError):
    """The command needs a CUDA GPU and none is visible."""


class Unsupported(GpuprofError):
    """An implementation cannot run a given shape or dtype (recorded as status `unsupported`)."""
