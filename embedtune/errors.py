"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class EmbedtuneError(Exception):
    """A problem with the user's input (data, config, model folder), stated in one line."""


class DataError(EmbedtuneError):
    """A data file or row is malformed; the message names the file, the row and the reason."""


class ConfigError(EmbedtuneError):
    """A config option has a bad value; the message names the option."""
