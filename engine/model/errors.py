class CheckpointError(Exception):
    """A checkpoint, a layer range or a runtime choice that Potluck cannot use.

    The message is written for the user: it says what is wrong and what to do.
    """


class DownloadError(CheckpointError):
    """Fetching a model from the Hugging Face hub failed; the message says why and what to do."""


class NotEnoughDiskSpace(DownloadError):
    """The files still to download do not fit on the disk that holds the Hugging Face cache."""
