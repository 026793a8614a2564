"""Errors a user can act on.

Every failure that reaches the command line is an :class:`Af2CpuError` whose message says what was
wrong, with which file or record, and what to do. The CLI prints the message, not a traceback.
"""


class Af2CpuError(Exception):
    """A problem the user can fix; the message names the thing and the fix."""


class ConfigError(Af2CpuError):
    """An invalid configuration: unknown key, bad value, bad group option."""


class InputError(Af2CpuError):
    """Bad user input: a FASTA record, a structure file, a features file."""


class ToolError(Af2CpuError):
    """An external program (jackhmmer, hhblits, ...) is missing, failed or timed out."""


class DatabaseError(Af2CpuError):
    """A configured database file is missing or malformed."""
