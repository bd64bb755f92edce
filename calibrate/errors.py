"""Errors raised by the calibrate package.

Every error here derives from :class:`CalibrateError`; catch that to handle any
calibration problem in one place::

    CalibrateError (ValueError)
    ├── InputError      a grade record or table that is invalid; names row and field
    ├── ModelError      a model specification that is invalid (bad confidence, ...)
    └── BlockTooLargeError  the grading graph joins more graders into one block than
                        the exact mixed-model path factorises

They subclass ``ValueError`` so Python callers can treat them as bad input; the
service maps them to 400 problem responses and the CLI to exit code 2.
An estimate that cannot be made is *not* an error: results carry ``None`` and a reason.

>>> str(InputError("grade 1.5 is outside [0, 1]", field="grade", row=3))
"row 3, field 'grade': grade 1.5 is outside [0, 1]"
"""

from __future__ import annotations

__all__ = ["BlockTooLargeError", "CalibrateError", "InputError", "ModelError"]


class CalibrateError(ValueError):
    """Base of every calibrate error."""


class InputError(CalibrateError):
    """Invalid input data. ``row`` is 1-based over the records given, or None."""

    def __init__(self, problem: str, *, field: str | None = None, row: int | None = None) -> None:
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)
        self.problem = problem
        self.field = field
        self.row = row


class ModelError(CalibrateError):
    """An invalid model specification."""


class BlockTooLargeError(CalibrateError):
    """Too many graders linked into one block for the exact mixed-model path."""
