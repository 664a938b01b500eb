"""The one error type for dataset files that are missing, truncated or malformed."""


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and where it should be."""
