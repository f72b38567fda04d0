"""The error of data that cannot train as given (import-free, so that the trainer's entry point catches it
without loading the data stack)."""


class DataError(ValueError):
    """Data that cannot train as given (a token id outside the vocabulary, an empty split): one line naming
    the file or the flag."""
