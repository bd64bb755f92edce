"""The outcome check: is a KR written as an activity rather than a measurable change?

"Launch the new onboarding flow" describes work; "Increase week-1 activation
from 20% to 35%" describes a result. The check is rule-based so every flag can
be explained:

1. The description is split into clauses (at punctuation and at "and", "then",
   "or"). The first word of each clause, after fillers such as "we will" or
   "successfully", is the clause's verb. A verb from a curated list of
   activity verbs (launch, complete, run, ship, hold, write, hire, ...) is a
   *trigger*; so is a past form of one that ends a clause ("Migration
   completed"). Verbs in a means phrase ("... by launching onboarding") are not
   triggers: the means of an outcome is allowed.
2. A *measurable change* is a number with a direction or a unit: "from X to Y",
   a percentage, an amount of money, a multiple ("2x"), a comparison ("below 3%",
   "at least 45"), a change verb with "to N" or "by N" ("increase NPS to 45"),
   or a doubling/halving verb.
3. A description with a trigger and no measurable change is flagged as an output.

>>> check = check_outcome("Launch the partner portal")
>>> check.is_output, check.triggers
(True, ('Launch',))
>>> check_outcome("Increase activation from 20% to 35% by launching onboarding").is_output
False
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["ACTIVITY_VERBS", "CHANGE_VERBS", "OutcomeCheck", "check_outcome"]


class OutcomeCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a KR description reads as an output (activity) and why.

    ``triggers`` are the activity words as written in the description;
    ``measurable_changes`` the fragments that count as a measurable change.
    ``suggestion`` proposes the outcome form when there is something to fix.
    """

    is_output: bool
    triggers: tuple[str, ...]
    reasons: tuple[str, ...]
    suggestion: str | None = None
    measurable_changes: tuple[str, ...] = ()


# --- vocabulary -----------------------------------------------------------------------------

#: Verbs that describe work done rather than a result. Deliberately left out:
#: words that are mostly nouns in KR text ("test", "support", "review", "update").
ACTIVITY_VERBS: Final[tuple[str, ...]] = (
    "launch", "complete", "finish", "run", "deliver", "ship", "release", "hold",
    "organise", "organize", "write", "create", "build", "implement", "host", "attend",
    "conduct", "publish", "hire", "recruit", "design", "develop", "deploy", "migrate",
    "introduce", "establish", "prepare", "draft", "document", "train", "plan", "start",
    "begin", "define", "schedule", "pilot", "redesign", "rebuild", "refactor", "integrate",
    "install", "upgrade", "finalise", "finalize", "produce", "present", "send", "announce",
    "submit", "research", "investigate", "evaluate", "analyse", "analyze", "explore",
    "set up", "roll out", "kick off", "work on", "participate", "coordinate", "facilitate",
    "onboard",
)  # fmt: skip

#: Verbs that state a change in a quantity. A clause led by one is phrased as an outcome.
CHANGE_VERBS: Final[tuple[str, ...]] = (
    "increase", "decrease", "reduce", "grow", "raise", "lower", "cut", "improve", "boost",
    "lift", "shrink", "drop", "double", "triple", "quadruple", "halve", "reach", "achieve",
    "hit", "exceed", "attain", "surpass", "keep", "maintain", "sustain", "expand",
    "accelerate", "shorten", "minimise", "minimize", "maximise", "maximize", "eliminate",
    "convert", "retain", "win", "close", "generate", "save", "earn",
)  # fmt: skip

_IRREGULAR: Final[dict[str, tuple[str, ...]]] = {
    "run": ("ran", "running", "runs"),
    "write": ("wrote", "written", "writing", "writes"),
    "build": ("built", "building", "builds"),
    "rebuild": ("rebuilt", "rebuilding", "rebuilds"),
    "hold": ("held", "holding", "holds"),
    "send": ("sent", "sending", "sends"),
    "begin": ("began", "begun", "beginning", "begins"),
    "ship": ("shipped", "shipping", "ships"),
    "plan": ("planned", "planning", "plans"),
    "submit": ("submitted", "submitting", "submits"),
    "set up": ("sets up", "setting up"),
    "kick off": ("kicked off", "kicking off", "kicks off"),
    "roll out": ("rolled out", "rolling out", "rolls out"),
    "cut": ("cuts", "cutting"),
    "grow": ("grew", "grown", "growing", "grows"),
    "drop": ("dropped", "dropping", "drops"),
    "win": ("won", "winning", "wins"),
    "hit": ("hits", "hitting"),
    "keep": ("kept", "keeping", "keeps"),
    "shrink": ("shrank", "shrunk", "shrinking", "shrinks"),
}

_FILLERS: Final = frozenset(
    {
        "we", "i", "they", "you", "team", "teams", "the", "our", "my", "will", "shall",
        "must", "should", "to", "successfully", "fully", "finally", "also", "then", "first",
        "help", "please",
    }
)  # fmt: skip
_COORDINATORS: Final = frozenset({"and", "then", "or", "plus", "&"})
_MEANS: Final = frozenset({"by", "through", "via", "using", "with", "while", "after"})
# After a past form, these mean the form closes its clause ("Portal launched by June").
_AFTER_PAST: Final = frozenset({"by", "in", "on", "before", "within", "and", "for", "ahead"})


def _forms(base: str) -> tuple[str, ...]:
    if base in _IRREGULAR:
        return (base, *_IRREGULAR[base])
    if " " in base:
        verb, particle = base.split(" ", 1)
        return tuple(f"{form} {particle}" for form in _forms(verb))
    stem = base[:-1] if base.endswith("e") else base
    third = base + ("es" if base.endswith(("s", "sh", "ch", "x", "z")) else "s")
    if base.endswith("y") and base[-2] not in "aeiou":
        return (base, third, base[:-1] + "ied", base + "ing", base[:-1] + "ies")
    past = base + "d" if base.endswith("e") else base + "ed"
    return (base, third, past, stem + "ing")


def _past_forms(base: str) -> set[str]:
    # Forms that can close a clause as a participle ("launched", "built", "written");
    # the base form is left out, as "the dry run" or "the plan" are nouns.
    return {
        f
        for f in _forms(base)[1:]
        if f.split(" ")[0].endswith(("ed", "en", "lt", "ld", "wn", "nt", "un"))
    }


_ACTIVITY_FORMS: Final[dict[str, str]] = {f: b for b in ACTIVITY_VERBS for f in _forms(b)}
_ACTIVITY_PAST: Final[frozenset[str]] = frozenset(f for b in ACTIVITY_VERBS for f in _past_forms(b))
_CHANGE_FORMS: Final[dict[str, str]] = {f: b for b in CHANGE_VERBS for f in _forms(b)}
_MULTIPLIERS: Final = tuple(
    f for b in ("double", "triple", "quadruple", "halve") for f in _forms(b)
)

# --- measurable change ----------------------------------------------------------------------

# A number not glued to a word ("Q3", "v2" are not quantities), with an optional
# currency sign and magnitude suffix.
_NUM = r"(?<![\w.])[-+]?[$€£]?\d[\d,]*(?:\.\d+)?(?![.,]?\d)(?:\s?(?:k|m|bn|mm)\b)?"
_PCT = r"(?:\s?(?:%|percent\b|per\s?cent\b|pp\b|percentage\s+points?\b|bps\b|basis\s+points\b))"
_UNIT = rf"(?:{_PCT}|\s?(?:x\b|×))"
_YEAR = r"(?:19|20)\d\d\b(?!\s*%)"
_TIME = r"\s*(?:days?|weeks?|months?|quarters?|years?|sprints?|hours?)\b"

_MEASURABLE: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "from X to Y",
        re.compile(rf"\bfrom\s+{_NUM}{_UNIT}?(?:\s+[^\s.;]+){{0,4}}?\s+to\s+{_NUM}{_UNIT}?", re.I),
    ),
    ("X to Y", re.compile(rf"{_NUM}{_UNIT}?\s*(?:->|→|=>)\s*{_NUM}{_UNIT}?", re.I)),
    ("percentage", re.compile(rf"{_NUM}{_PCT}", re.I)),
    (
        "amount of money",
        re.compile(
            r"(?<![\w.])(?:[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:k|m|bn|mm)\b)?|\d[\d,]*(?:\.\d+)?\s?(?:k|m|bn)?\s?(?:usd|eur|gbp)\b)",
            re.I,
        ),
    ),
    ("multiple", re.compile(rf"{_NUM}\s?(?:x|×)(?![\w])", re.I)),
    ("doubling or halving", re.compile(rf"\b(?:{'|'.join(_MULTIPLIERS)})\b", re.I)),
    (
        "comparison",
        re.compile(
            r"(?:\b(?:below|above|at\s+least|at\s+most|less\s+than|more\s+than|fewer\s+than|"
            r"greater\s+than|no\s+more\s+than|no\s+less\s+than|at\s+or\s+above|at\s+or\s+below)"
            rf"|>=|<=|≥|≤|<|>)\s*{_NUM}"
            # "over" and "under" also give durations ("over 3 months"); those are not targets.
            rf"|\b(?:over|under)\s+{_NUM}(?!{_TIME})",
            re.I,
        ),
    ),
    (
        "target number",
        re.compile(
            r"\b(?:reach|reaches|reached|reaching|achieve|achieves|achieved|achieving|hit|hits|"
            r"hitting|exceed|exceeds|exceeded|exceeding|attain|attains|attained|attaining|"
            r"surpass|surpasses|surpassed|surpassing)\b\s+(?:\w+\s+){0,2}?"
            rf"(?!{_YEAR}){_NUM}",
            re.I,
        ),
    ),
)

# "increase NPS to 45", "grow MAU by 2,000": a change verb, then "to N" or "by N" in the
# same sentence. Found in code rather than one regex: an alternation of every verb
# form, tried at every position, was the slowest part of the check.
_WORD = re.compile(r"[A-Za-z]+")
_TO_OR_BY_NUMBER = re.compile(rf"\b(?:to|by)\s+(?!{_YEAR}){_NUM}", re.I)

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d[\d,.]*%?|[.;:!?,()\n•·–—]|&")
_BREAKS: Final = frozenset(".;:!?,()\n•·–—")


def _measurable(text: str) -> list[str]:
    """The fragments of ``text`` that state a measurable change, overlapping matches merged."""
    spans = [
        match.span()
        for _name, pattern in _MEASURABLE
        for match in pattern.finditer(text)
        if match.group(0).strip()
    ]
    for word in _WORD.finditer(text):
        if word.group(0).lower() in _CHANGE_FORMS:
            number = _TO_OR_BY_NUMBER.search(text, word.end())
            if number is not None and not set(text[word.end() : number.start()]) & {".", ";"}:
                spans.append((word.start(), number.end()))
    spans.sort()
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [text[start:end].strip() for start, end in merged]


class _Clauses(msgspec.Struct):
    triggers: list[str]
    change_verbs: list[str]


def _scan(text: str) -> _Clauses:
    """Clause-head activity verbs (as written) and change verbs, in order."""
    tokens = [m.group(0) for m in _TOKEN.finditer(text)]
    out = _Clauses(triggers=[], change_verbs=[])
    at_head, means = True, False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        low = token.lower()
        if token in _BREAKS:
            at_head, means = True, False
            i += 1
            continue
        if low in _COORDINATORS:
            at_head = True
            i += 1
            continue
        nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
        pair = f"{low} {nxt}"
        if low in _MEANS:
            means, at_head = True, False
        elif at_head and low in _FILLERS:
            pass  # keep looking for the clause's verb
        elif at_head:
            at_head = False
            if not means and nxt != "of":  # "Launch of the portal" is a noun phrase
                if pair in _ACTIVITY_FORMS:
                    out.triggers.append(f"{token} {tokens[i + 1]}")
                    i += 1
                elif low in _ACTIVITY_FORMS:
                    out.triggers.append(token)
                elif low in _CHANGE_FORMS:
                    out.change_verbs.append(token)
        elif not means and (low in _ACTIVITY_PAST or pair in _ACTIVITY_PAST):
            closes = nxt in _AFTER_PAST or nxt in _BREAKS or nxt == ""
            if pair in _ACTIVITY_PAST:
                after = tokens[i + 2].lower() if i + 2 < len(tokens) else ""
                if after in _AFTER_PAST or after in _BREAKS or after == "":
                    out.triggers.append(f"{token} {tokens[i + 1]}")
                    i += 1
            elif closes:
                out.triggers.append(token)
        i += 1
    return out


def _dedupe(words: list[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for word in words:
        seen.setdefault(word.lower(), word)
    return tuple(seen.values())


def _quote(words: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def check_outcome(description: str | None) -> OutcomeCheck:
    """Check whether a KR description is phrased as an activity with no measurable change.

    Returns the verdict with the words that triggered it, the reasons and, when
    the description can be improved, a suggested outcome form.

    >>> c = check_outcome("Hire 3 senior engineers")
    >>> c.is_output, c.triggers
    (True, ('Hire',))
    >>> c.suggestion.startswith("Rewrite as a measurable change")
    True
    >>> check_outcome("Reduce monthly churn below 3%").is_output
    False
    >>> check_outcome(None).reasons
    ('no description to check',)
    """
    text = (description or "").strip()
    if not text:
        return OutcomeCheck(is_output=False, triggers=(), reasons=("no description to check",))
    scan = _scan(text)
    triggers = _dedupe(scan.triggers)
    changes = tuple(_measurable(text))
    change_verbs = _dedupe(scan.change_verbs)
    reasons: list[str] = []
    if triggers:
        reasons.append(f"phrased as an activity: {_quote(triggers)} describes work to be done")
    if change_verbs:
        reasons.append(f"phrased as a change: {_quote(change_verbs)}")
    if changes:
        reasons.append(f"states a measurable change: {_quote(changes)}")
    else:
        reasons.append(
            "no measurable change: no 'from X to Y', percentage, amount, multiple "
            "or comparison such as 'below 3%'"
        )
    is_output = bool(triggers) and not changes
    if triggers and changes:
        reasons.append("the activity is read as the means to that change, so it is an outcome")
    suggestion: str | None = None
    if is_output:
        reasons.append("an activity with no measurable change is an output, not an outcome")
        suggestion = (
            "Rewrite as a measurable change: '<metric> from X to Y'. Ask what "
            f"{_quote(triggers[:1])} should change for users or the business, and by how "
            "much, e.g. 'Increase weekly active teams from 1,200 to 2,000'."
        )
    elif not changes:
        lead = change_verbs[0] if change_verbs else "<change>"
        suggestion = f"Add the numbers: '{lead} <metric> from X to Y'."
    return OutcomeCheck(
        is_output=is_output,
        triggers=triggers,
        reasons=tuple(reasons),
        suggestion=suggestion,
        measurable_changes=changes,
    )
