"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class MedxganError(Exception):
    """A problem with the user's input (data, model file, options) — never a bug in medxgan."""
