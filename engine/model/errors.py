class CheckpointError(Exception):
    """A checkpoint, a layer range or a runtime choice that Potluck cannot use.

    The message is written for the user: it says what is wrong and what to do.
    """
