"""Warnings raised by mfdask itself (tests turn them into errors)."""


class MfdaskWarning(UserWarning):
    """A condition the user should know about but that does not stop the job."""
