"""What annotators read before and while they rank: the constitution (params.yaml's
rank_responses.principles, each with its name and description) and an optional markdown file.

Markdown becomes HTML here, on the server, with raw HTML turned off: a `<script>` or an
`onerror=` in the file comes out escaped, as text (markdown-it-py, CommonMark, `html: False`; its
link check drops javascript:, vbscript:, file: and data: links). The page inserts only this HTML
and writes everything else with textContent.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

from rlhf.errors import InputError


@dataclass(frozen=True)
class Guidelines:
    principles: list[dict] = field(default_factory=list)  # [{"name", "description"}]
    html: str = ""  # the markdown file, rendered with raw HTML escaped

    @property
    def digest(self) -> str:
        """Changes when the guidelines change, so the page shows them again on its next open."""
        return hashlib.sha256(repr((self.principles, self.html)).encode()).hexdigest()[:16]

    def as_json(self) -> dict:
        return {**asdict(self), "digest": self.digest}

    def __bool__(self) -> bool:
        return bool(self.principles or self.html)


def render_markdown(text: str) -> str:
    return MarkdownIt("commonmark", {"html": False}).render(text)


def describe(principle) -> str:
    """A principle's description, or what its rule checks where it has none (the demo's have none)."""
    if getattr(principle, "description", None):
        return principle.description
    kind = principle.kind
    if kind == "mentions_topic":
        text = "mentions the topic the prompt asks about"
    elif kind == "contains_any":
        text = "contains one of: " + ", ".join(f'"{w}"' for w in principle.words)
    elif kind == "excludes_all":
        text = "contains none of: " + ", ".join(f'"{w}"' for w in principle.words)
    elif kind == "word_count":
        text = f"is {principle.min} to {principle.max} words long"
    else:
        text = kind.replace("_", " ")
    weight = getattr(principle, "weight", 1.0)
    return text + (f" (counts {weight:g}x)" if weight != 1.0 else "")


def load_guidelines(principles=(), markdown_path: str | Path | None = None) -> Guidelines:
    """The page's guidelines from config principles and an optional markdown file."""
    html = ""
    if markdown_path:
        try:
            html = render_markdown(Path(markdown_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{markdown_path}: guidelines file not found") from None
    rows = [{"name": p.name, "description": describe(p)} for p in principles]
    return Guidelines(principles=rows, html=html)


def principles_from_params(params_path: str | Path) -> list:
    """rank_responses.principles of a params.yaml; none if the file is not there."""
    if not Path(params_path).is_file():
        return []
    from rlhf.config import load_params

    return list(load_params(params_path).rank_responses.principles)
