"""Prompt sets: quality and speed are judged over several prompts (and seeds), not one image.

A prompt set is a plain text file, one prompt per line, `#` starting a comment. Shipped sets live in
`optim/data/prompts/` (`embedded`: the embedded model's vocabulary; `general`: sixteen varied prompts for Hub
models); a user's file is given by path.

    >>> prompts = load_prompt_set("embedded")
    >>> len(prompts.prompts) >= 8
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optim.data import DATA_DIR
from optim.errors import ConfigError

PROMPTS_DIR = DATA_DIR / "prompts"
MAX_PROMPT_CHARS = 2000
MAX_PROMPTS = 256


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[str, ...]


def shipped_prompt_sets() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.txt"))


def parse_prompt_set(text: str, *, name: str) -> PromptSet:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt set {name!r}, line {number}: longer than {MAX_PROMPT_CHARS} characters")
        prompts.append(line)
    if not prompts:
        raise ConfigError(f"prompt set {name!r} has no prompts (one per line; '#' starts a comment)")
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(f"prompt set {name!r} has {len(prompts)} prompts; at most {MAX_PROMPTS}")
    return PromptSet(name, tuple(prompts))


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A shipped set by name, or a text file by path."""
    if name_or_path in shipped_prompt_sets():
        path = PROMPTS_DIR / f"{name_or_path}.txt"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"unknown prompt set {name_or_path!r}: give a shipped one "
                              f"({', '.join(shipped_prompt_sets())}) or the path of a text file, one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"prompt set {str(path)!r} cannot be read ({error})") from None
    return parse_prompt_set(text, name=path.stem)


def default_prompt_set(model: str) -> str:
    """The shipped set that suits a model: the embedded one's own vocabulary, else the general set."""
    return "embedded" if model == "embedded" else "general"
