"""Errors a user can cause and fix: the CLI prints the message alone and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input (config value, data, file), stated in one sentence.

    The message names the key, value or path and what to do about it. The CLI
    prints it without a traceback and exits with status 2.
    """


class DatasetUnavailable(UserError):
    """A dataset's files could not be found, downloaded or verified."""
