"""The one error type a store raises: every problem with a store's bytes ends here."""


class StoreError(Exception):
    """A store (or a source for one) is missing, malformed, damaged or unsupported."""


class ChecksumError(StoreError):
    """Stored bytes do not match their recorded xxh3 checksum."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names
