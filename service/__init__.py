"""okrcal service layer: CLI, settings, storage and the HTTP API around the pure core."""

__all__: list[str] = []
