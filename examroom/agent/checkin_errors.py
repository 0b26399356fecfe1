"""What a proctor's request at the door can run into; the control socket replies with the text.

Apart from the station so the sweep log, which the station owns, raises the same errors.
"""
from __future__ import annotations


class CheckinError(ValueError):
    """A proctor's request that cannot be carried out; the control socket replies with the text."""


class UnknownSeat(CheckinError):
    pass


class AmbiguousCandidate(CheckinError):
    def __init__(self, what: str, seats: list[str]) -> None:
        self.seats = seats
        super().__init__(f"{what} matches seats {', '.join(seats)}: admit by seat instead")


class SameProctor(CheckinError):
    pass


class HandInTooEarly(CheckinError):
    """考试终了信号发出前不得交卷: before the earliest hand-in time, unless forced on record."""
