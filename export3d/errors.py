"""One base class for errors a user can act on: the CLI prints the message as one sentence and
exits with status 2. Every package's user-facing errors derive from it."""


class UserError(ValueError):
    """Bad input or set-up; the message says what is wrong and what to do."""
