"""The error a run raises for what its user can change (inputs, settings, output folder)."""


class RunError(Exception):
    """A run cannot start or go on; the message is one line for the user (exit status 2)."""
