"""The retrieval expert after review: files with a text suffix that are not text (an image renamed .txt, random
bytes) are skipped with a warning instead of indexed, a folder of nothing else is refused like an empty one, and
UTF-8 with a BOM, UTF-16 with a BOM and Latin-1 legacy text are read as the text they are."""

import asyncio
import logging
from pathlib import Path

import pytest

from mor.errors import ConfigError
from mor.system import Answer, ExpertInfo, Request
from mor.system.experts.retrieval import RetrievalExpert

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"
       b"\x00\x00\x00\x19tEXtSoftware\x00Adobe ImageReady planet\x00\x00\x00\x00IEND\xaeB`\x82")
NOISE = bytes(b for b in range(1, 256) if b not in b"\x81\x8d\x8f\x90\x9d") * 8  # no NUL; cp1252 but for controls


def ask(expert: RetrievalExpert, question: str) -> Answer:
    """One answer, within 30 s at most, so a hang fails the test instead of stalling the run."""
    return asyncio.run(asyncio.wait_for(expert.answer(Request.of(question)), timeout=30))


def skipped(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The documents the log says were skipped: file name → the warning."""
    return {Path(r.args[0]).name: r.getMessage() for r in caplog.records
            if r.name == "mor.system" and r.levelno == logging.WARNING and "skipped" in r.msg}


def test_retrieval_skips_binary_files_with_a_text_suffix_and_logs_why(tmp_path, caplog):
    """An image renamed .txt was indexed as text and its tokens answered with confidence 1."""
    (tmp_path / "planets.txt").write_text("Jupiter is the largest planet.")
    (tmp_path / "image.txt").write_bytes(PNG)
    (tmp_path / "noise.md").write_bytes(NOISE)
    (tmp_path / "nul.txt").write_text("ImageReady software\x00planet")
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        expert = RetrievalExpert(ExpertInfo("docs"), tmp_path)
    assert [p.source for p in expert.passages] == ["planets.txt#1"]
    answer = ask(expert, "ImageReady software")
    assert answer.confidence == 0.0 and answer.details["sources"] == []
    assert ask(expert, "which planet is the largest").details["sources"] == ["planets.txt#1"]
    logged = skipped(caplog)
    assert set(logged) == {"image.txt", "noise.md", "nul.txt"}
    assert "NUL bytes" in logged["image.txt"] and "control bytes" in logged["noise.md"]
    assert str(tmp_path / "image.txt") in logged["image.txt"]


def test_retrieval_refuses_a_folder_of_only_binary_files_like_an_empty_one(tmp_path):
    (tmp_path / "image.txt").write_bytes(PNG)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "noise.md").write_bytes(NOISE)
    with pytest.raises(ConfigError, match=r"^expert docs: no text in \.txt or \.md files under .*; add documents$") \
            as caught:
        RetrievalExpert(ExpertInfo("docs"), tmp_path)
    assert "\n" not in str(caught.value)
    assert "(2 skipped as not readable text: image.txt, sub/noise.md)" in str(caught.value)


def test_retrieval_reads_utf8_with_a_bom_utf16_with_a_bom_and_latin1_text(tmp_path, caplog):
    (tmp_path / "bom.txt").write_bytes("Jupiter is the largest planet.".encode("utf-8-sig"))
    (tmp_path / "wide.txt").write_text("Saturn has rings of ice.", encoding="utf-16")
    (tmp_path / "legacy.md").write_bytes("Le café crème est servi à Zürich.\r\n\r\nIt costs 5 €.".encode("cp1252"))
    (tmp_path / "plain.txt").write_text("Ünïcödé names: Ærøskøbing and 東京.\n\nEscape \x1b[1mbold\x1b[0m stays.")
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        expert = RetrievalExpert(ExpertInfo("docs"), tmp_path, top_k=1)
    assert skipped(caplog) == {}
    texts = {p.source: p.text for p in expert.passages}
    assert texts["bom.txt#1"] == "Jupiter is the largest planet."
    assert texts["wide.txt#1"] == "Saturn has rings of ice."
    assert texts["legacy.md#1"] == "Le café crème est servi à Zürich."
    assert texts["legacy.md#2"] == "It costs 5 €."
    assert texts["plain.txt#1"] == "Ünïcödé names: Ærøskøbing and 東京."
    assert ask(expert, "café Zürich").details["sources"] == ["legacy.md#1"]
    assert ask(expert, "saturn rings").details["sources"] == ["wide.txt#1"]


def test_retrieval_skips_a_file_it_cannot_read_and_keeps_the_rest(tmp_path, caplog, monkeypatch):
    (tmp_path / "open.txt").write_text("Jupiter is the largest planet.")
    (tmp_path / "locked.txt").write_text("Mars is red.")
    open_file = Path.open

    def refuse_locked(path: Path, *args, **kwargs):
        if path.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return open_file(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse_locked)  # chmod 000 would not stop root
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        expert = RetrievalExpert(ExpertInfo("docs"), tmp_path)
    assert [p.source for p in expert.passages] == ["open.txt#1"]
    assert skipped(caplog)["locked.txt"].endswith("skipped: Permission denied")


def test_retrieval_cuts_a_file_without_blank_lines_into_passages_of_at_most_2000_characters(tmp_path):
    """A log without blank lines was one passage: any match answered with the whole file."""
    lines = [f"{i:05d} worker {i % 7} finished job {i}" for i in range(2_000)] + ["00042 the kraken woke up"]
    (tmp_path / "log.txt").write_text("\n".join(lines))
    (tmp_path / "long.txt").write_text(" ".join(["word"] * 1_500))  # one line of 7,499 characters
    expert = RetrievalExpert(ExpertInfo("docs"), tmp_path)
    assert all(len(p.text) <= 2_000 for p in expert.passages) and len(expert.passages) > 30
    log = [p.text for p in expert.passages if p.source.startswith("log.txt")]
    assert "\n".join(log).split("\n") == lines  # cut at line ends: every line kept whole, in order
    answer = ask(expert, "kraken")
    assert "00042 the kraken woke up" in answer.text and len(answer.text) < 2_100
