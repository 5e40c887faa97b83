"""Exceptions that carry a user mistake to the command line as one readable line."""


class UserError(Exception):
    """A mistake in the user's input: the message names the value and the fix."""
