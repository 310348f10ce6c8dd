"""The one exception the rules package raises at load time: `RulesError`.

It names the file, the line (from the YAML marks) and the rule, so `bridge check-config` and
the daemon's start-up can point a user at the exact place to fix. Evaluation never raises it:
evaluation problems are recorded per rule in the `Evaluation` (see `engine.py`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RulesError(Exception):
    """A rules file that cannot be loaded.

    ``str(err)`` reads ``config/rules.yaml:12: rule 'x': unknown operation 'foo' (known: ...)``.
    When several problems are found at once, the first is the error itself and all of them
    (the first included) are in `problems`.
    """

    def __init__(
        self,
        file: str,
        line: int | None,
        rule: str | None,
        message: str,
        problems: tuple[RulesError, ...] = (),
    ) -> None:
        self.file = file
        self.line = line
        self.rule = rule
        self.message = message
        self.problems: tuple[RulesError, ...] = problems or (self,)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f" rule {self.rule!r}:" if self.rule else ""
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        return f"{where}:{who} {self.message}{tail}"

    @classmethod
    def from_problems(cls, problems: list[RulesError]) -> RulesError:
        """One error to raise for several problems: the first leads, all are kept."""
        first = problems[0]
        return cls(first.file, first.line, first.rule, first.message, tuple(problems))


def did_you_mean(word: str, known: Iterable[str], what: str = "known") -> str:
    """`` (did you mean 'x'?)`` for the closest of `known`, else `` (<what>: a, b, ...)``."""
    names = sorted(set(known))
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" ({what}: {', '.join(names) or 'none'})"
