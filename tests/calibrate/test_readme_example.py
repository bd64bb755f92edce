"""The README's "From Python" example runs and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's From Python section has no python block"
    return match.group(1)


def _same(printed: str, shown: str) -> bool:
    """``printed`` matches ``shown`` token by token, numbers to the decimals shown."""
    got, want = printed.split(), shown.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if re.fullmatch(r"-?\d+\.\d+", w):
            decimals = len(w.split(".")[1])
            if round(float(g), decimals) != float(w):
                return False
        elif g != w:
            return False
    return True


def test_the_readme_python_example_prints_what_it_says() -> None:
    code = _example()
    shown = [m.group(1) for m in re.finditer(r"^# (.+?)\s+\(rounded\)$", code, re.M)]
    assert len(shown) == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    lines = out.getvalue().splitlines()
    for want in shown:
        assert any(_same(line, want) for line in lines), (want, lines)
