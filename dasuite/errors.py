"""User-facing errors: the CLI prints their message (no traceback unless --debug) and exits non-zero."""


class DasuiteError(Exception):
    """A problem with the user's input or environment (missing file, bad data). Exit code 1."""

    exit_code = 1


class ConfigError(DasuiteError):
    """An experiment file or override that does not match the schema. Exit code 2."""

    exit_code = 2
