"""The prompt palette of ``worldsim play``: up to nine prompts on the number keys 1-9.

The default palette is the toy world's five themes (the first prompt of each, labelled by theme name), which the
default model was trained on. ``--prompts FILE`` gives one's own list, one prompt per line:

    # lines starting with # and blank lines are skipped
    forest: a quiet forest path at dawn
    a snowy mountain village at night

A line may start with a label and a colon (one word of letters, digits, ``_`` or ``-``, at most 16 characters),
which the HUD shows instead of the prompt's first characters. At most nine prompts; each must fit the daemon's
``welcome.prompt.max_chars`` (checked once connected). Errors name the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 9
LABEL_CHARS = 16  # longest label, given or made from the prompt
_LABELLED = re.compile(rf"^([\w-]{{1,{LABEL_CHARS}}}):\s*(.*)$")


@dataclass(frozen=True)
class PaletteEntry:
    label: str  # short name the HUD shows
    text: str  # the prompt sent
    line: int = 0  # line of the palette file it came from (0: built in)


def short_label(text: str) -> str:
    """The prompt cut to ``LABEL_CHARS`` characters: "a snowy mountain village" -> "a snowy mounta.."."""
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 2].rstrip() + ".."


@dataclass(frozen=True)
class PromptPalette:
    entries: tuple[PaletteEntry, ...]
    source: str = "the default palette"  # where the entries came from, for error messages

    @classmethod
    def default(cls) -> PromptPalette:
        """The five themes of the toy world: the first prompt of each, labelled with the theme's name."""
        from worldsim.world.themes import THEMES

        return cls(tuple(PaletteEntry(name, theme.prompts[0]) for name, theme in THEMES.items()))

    @classmethod
    def parse(cls, text: str, source: str) -> PromptPalette:
        """Entries from a palette file's text (format in the module docstring); ``source`` names it in errors."""
        entries = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _LABELLED.match(line)
            label, prompt = (m.group(1), m.group(2).strip()) if m else (short_label(line), line)
            if not prompt:
                raise ValueError(f"{source}:{number}: label {label!r} has no prompt after the colon")
            if len(entries) == MAX_ENTRIES:
                raise ValueError(f"{source}:{number}: more than {MAX_ENTRIES} prompts (keys 1-9); remove some")
            entries.append(PaletteEntry(label, prompt, number))
        if not entries:
            raise ValueError(f"{source}: no prompts (one per line; blank lines and # comments are skipped)")
        return cls(tuple(entries), source)

    @classmethod
    def load(cls, path: str | Path | None) -> PromptPalette:
        """The palette file at ``path``, or the default palette when ``path`` is None."""
        if path is None:
            return cls.default()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read prompt palette {path}: {e}") from None
        return cls.parse(text, str(path))

    def check(self, max_chars: int) -> None:
        """Refuse prompts longer than the daemon accepts (``welcome.prompt.max_chars``), naming file and line."""
        for e in self.entries:
            if len(e.text) > max_chars:
                where = f"{self.source}:{e.line}" if e.line else self.source
                raise ValueError(f"{where}: prompt {e.label!r} has {len(e.text)} characters; the daemon accepts at "
                                 f"most {max_chars}")

    def entry(self, number: int) -> PaletteEntry | None:
        """The entry on number key ``number`` (1-9), or None when the palette is shorter."""
        return self.entries[number - 1] if 1 <= number <= len(self.entries) else None

    def active(self, prompt: str) -> int | None:
        """The number (1-9) of the entry whose prompt is ``prompt`` (typed or picked), or None."""
        return next((i for i, e in enumerate(self.entries, 1) if e.text == prompt), None)
