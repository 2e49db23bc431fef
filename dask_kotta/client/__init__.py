"""The Kotta client: ``Kotta``, ``KottaJob``, ``KOut`` and ``@kottajob``."""

from .connection import Kotta
from .decorator import kottajob
from .job import KottaJob
from .kout import KOut

__all__ = ["Kotta", "KottaJob", "KOut", "kottajob"]
