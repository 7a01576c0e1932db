"""An expert that answers from a local folder of documents with BM25 retrieval (the `bm25s` library).

Documents are the .txt and .md files under the folder, split into paragraphs at blank lines, and paragraphs longer
than 2,000 characters (a log without blank lines, say) into pieces at line ends; the index is built once, when the
expert is made. A file is read as UTF-8 (BOM optional), as UTF-16 if it starts with a UTF-16 BOM, else
as Windows-1252 (Latin-1) legacy text; one holding NUL or other control bytes, or that none of these decodes, is not
text (an image renamed .txt, say) and is skipped with a warning in the log, so its bytes are never an answer.

Confidence = coverage × (½ + ½ margin): coverage is the share of the query's indexed terms (words found somewhere in
the documents) that the best passage holds, margin the best score's lead over the runner-up, (s₁ − s₂) / s₁. A unique
passage holding every such term scores 1; a tie scores at most ½; no matching passage scores 0. The runner-up is
retrieved for the margin even when `top_k` is 1.
"""

import codecs
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s

from mor.errors import ConfigError, check
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.request import Answer, Request

log = logging.getLogger("mor.system")

SUFFIXES = (".txt", ".md")
PASSAGE_CHARS = 2_000  # a passage is an answer: longer paragraphs are cut into pieces
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls but for \t \n \v \f \r: never in legacy text


@dataclass(frozen=True)
class Passage:
    """One paragraph of one document: its text and where it came from (`path#n`, n counting from 1)."""

    text: str
    source: str


def decode(data: bytes) -> str:
    """`data` as text by the rules in the module's docstring, or a ValueError saying why it is not text."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise ValueError("a UTF-16 byte order mark, but not UTF-16 text") from None
        if "\x00" in text:
            raise ValueError("binary: UTF-16 with NUL characters")
        return text
    if b"\x00" in data:
        raise ValueError("binary: it holds NUL bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise ValueError("neither UTF-8 nor Windows-1252 text") from None
    if CONTROL.search(text):
        raise ValueError("binary: neither UTF-8 nor Windows-1252 text, it holds control bytes")
    return text


def pieces(paragraph: str, limit: int = PASSAGE_CHARS) -> list[str]:
    """`paragraph` in pieces of at most `limit` characters, cut at the last line end that fits, else the last
    space, else at the limit."""
    out = []
    while len(paragraph) > limit:
        cut = max(paragraph.rfind("\n", 0, limit + 1), 0) or max(paragraph.rfind(" ", 0, limit + 1), 0) or limit
        out.append(paragraph[:cut].strip())
        paragraph = paragraph[cut:].strip()
    return [*out, paragraph]


def read_text(path: Path) -> str | None:
    """The text of `path`, or None, with a warning naming it and why, when it cannot be read or is not text."""
    try:
        return decode(path.read_bytes())
    except (OSError, ValueError) as e:
        log.warning("document %s skipped: %s", path, e.strerror if isinstance(e, OSError) else e)
        return None


def read_passages(folder: Path) -> tuple[list[Passage], list[str]]:
    """The paragraphs of every .txt/.md file under `folder`, in path order, and the files skipped as unreadable."""
    passages: list[Passage] = []
    skipped: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        name, text = path.relative_to(folder).as_posix(), read_text(path)
        if text is None:
            skipped.append(name)
            continue
        paragraphs = (piece for p in re.split(r"\n\s*\n", text) for piece in pieces(p.strip()))
        passages += [Passage(p, f"{name}#{n}") for n, p in enumerate((p for p in paragraphs if p), start=1)]
    return passages, skipped


def skipped_note(skipped: list[str]) -> str:
    """The error's note on the files skipped, naming the first three: they may be why no text is left."""
    if not skipped:
        return ""
    names = ", ".join(skipped[:3]) + (", …" if len(skipped) > 3 else "")
    return f" ({len(skipped)} skipped as not readable text: {names})"


class RetrievalExpert(Expert):
    """Answers with the `top_k` best-matching passages of the documents in `folder` and their sources."""

    def __init__(self, info: ExpertInfo, folder: str | Path, *, top_k: int = 3, stopwords: str = "en") -> None:
        super().__init__(info)
        folder = Path(folder)
        check(top_k >= 1, f"expert {info.name}: top_k must be ≥ 1, got {top_k}")
        check(folder.is_dir(), f"expert {info.name}: document folder {folder} "
                               f"{'is a file' if folder.exists() else 'does not exist'}; give the folder of documents")
        self.passages, skipped = read_passages(folder)
        check(bool(self.passages), f"expert {info.name}: no text in .txt or .md files under {folder}"
                                   f"{skipped_note(skipped)}; add documents")
        self.top_k, self.stopwords = min(top_k, len(self.passages)), stopwords
        try:
            tokens = self._tokens([p.text for p in self.passages])
        except ValueError as e:  # bm25s names the stopword lists it knows
            raise ConfigError(f"expert {info.name}: stopwords {stopwords!r}: {e}") from None
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=self.stopwords, return_ids=False, show_progress=False)

    async def _answer(self, request: Request) -> Answer:
        return await self.in_thread(self._search, request.question)

    def _search(self, question: str) -> Answer:
        terms = [t for t in self._tokens([question])[0] if t in self.index.vocab_dict]
        found: list[tuple[Passage, float]] = []
        if terms:  # at least 2 for the margin, even when top_k is 1; only top_k are shown
            k = min(max(self.top_k, 2), len(self.passages))
            ranks, scores = self.index.retrieve([terms], k=k, show_progress=False)
            found = [(self.passages[int(i)], float(s)) for i, s in zip(ranks[0], scores[0], strict=True) if s > 0]
        if not found:
            return Answer(expert=self.name, text="No passage in the documents matches the question.",
                          confidence=0.0, details={"passages": [], "sources": []})
        best = found[0][1]
        runner_up = found[1][1] if len(found) > 1 else 0.0
        found = found[:self.top_k]
        present = set(self._tokens([found[0][0].text])[0])
        coverage = sum(t in present for t in terms) / len(terms)
        passages: list[dict[str, Any]] = [{"source": p.source, "score": s, "text": p.text} for p, s in found]
        return Answer(expert=self.name, text="\n\n".join(f"{p.text} [{p.source}]" for p, _ in found),
                      confidence=coverage * (0.5 + 0.5 * (best - runner_up) / best),
                      details={"passages": passages, "sources": [p.source for p, _ in found]})
