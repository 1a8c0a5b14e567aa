"""Errors a user can fix. The CLI prints these as one line, never a traceback."""


class UserError(Exception):
    """Something the user can fix: the message names the file/setting and what to do."""
