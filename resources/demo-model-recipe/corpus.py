"""The demo model's training text: prose from two documentation packages of Debian 12.

Both are openly licensed English, ship in Debian's main archive, and are fetched with
`apt-get download` at the exact versions below (their SHA-256 is checked):

- python3.11-doc: the Python 3.11 documentation (reStructuredText sources under
  html/_sources). Licence: PSF License Agreement (https://docs.python.org/3.11/license.html).
- debian-handbook: "The Debian Administrator's Handbook", English HTML. Licence: GPL-2.0+ or
  CC-BY-SA-3.0, at the user's choice (we use CC-BY-SA-3.0).

Only prose is kept: code blocks, tables, directives and markup are dropped, and a paragraph stays
only if it reads like sentences. Each document becomes a list of sections (title, paragraphs),
which train.py turns into chat turns: "Tell me about <title>." answered by the section's text.
"""

from __future__ import annotations

import hashlib
import html.parser
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {
    "python3.11-doc": ("3.11.2-6+deb12u8", "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"),
    "debian-handbook": ("11.20220922", "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa"),
}


@dataclass
class Section:
    title: str
    paragraphs: list[str]
    source: str


def fetch_packages(work: Path) -> Path:
    """apt-get download the pinned packages into work/ and unpack them; returns the unpack root."""
    root = work / "root"
    for name, (version, sha256) in PACKAGES.items():
        debs = list(work.glob(f"{name}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=work, check=True)
            debs = list(work.glob(f"{name}_*.deb"))
        digest = hashlib.sha256(debs[0].read_bytes()).hexdigest()
        if digest != sha256:
            raise SystemExit(f"{debs[0].name}: SHA-256 {digest} is not the pinned {sha256}")
        print(f"{debs[0].name} sha256={digest}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    return root


# --- prose filter -----------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][a-z]+(?:'[a-z]+)?")


def reads_like_prose(text: str) -> bool:
    words = text.split()
    if len(words) < 8 or len(words) > 400:
        return False
    plain = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:!?()\"'")))
    return plain / len(words) >= 0.75 and text.rstrip()[-1:] in ".!?:" and text[:1].isupper()


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- Python documentation (reStructuredText) --------------------------------------------------

_ROLE = re.compile(r":[\w:+-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")   # :func:`~os.path.join` -> os.path.join
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")                  # `text <url>`_ -> text
_HEADING_RULE = re.compile(r"^([=\-~^\"'*#+`])\1{2,}\s*$")


def _rst_inline(text: str) -> str:
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if m.group(0).startswith(":") and "~" in m.group(0)
                     else m.group(1), text)
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_?", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"\*([^*]+)\*", r"\1", text)
    text = re.sub(r"\s*\[#\]_|\s*\[\d+\]_", "", text)
    return text.replace("::", ":").replace("|", "")


_LITERAL_DIRECTIVE = re.compile(r"^\s*\.\.\s+(code-block|code|doctest|testcode|testoutput|productionlist|"
                                r"sourcecode|literalinclude|highlight|csv-table|list-table|table|toctree|"
                                r"raw|only|include|image|figure)::")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_sections(path: Path) -> list[Section]:
    """Sections of one .rst file. Prose inside description directives (`.. function::` bodies)
    counts; literal blocks (after `::`), code directives, lists and tables do not."""
    lines = path.read_text(encoding="utf-8", errors="replace").expandtabs().splitlines()
    sections: list[Section] = []
    title, paragraphs, block = None, [], []
    literal_indent = None   # skip lines indented deeper than this (a literal block's body)
    block_indent = 0        # the indentation of the paragraph being collected

    def flush_block():
        nonlocal block
        if block:
            text = _clean(_rst_inline(" ".join(block)))
            if reads_like_prose(text):
                paragraphs.append(text)
            block = []

    def flush_section():
        nonlocal paragraphs
        if title and paragraphs:
            sections.append(Section(title, paragraphs, f"python3.11-doc:{path.name}"))
        paragraphs = []

    for i, line in enumerate(lines):
        if not line.strip():
            flush_block()
            continue
        if literal_indent is not None:
            if _indent(line) > literal_indent:
                continue
            literal_indent = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (_HEADING_RULE.match(nxt) and not line.startswith(" ")
                and len(nxt.strip()) >= len(line.strip())):
            flush_block()
            flush_section()
            title = _clean(_rst_inline(line))
            continue
        if _HEADING_RULE.match(line):
            continue
        stripped = line.strip()
        if _LITERAL_DIRECTIVE.match(line):
            flush_block()
            literal_indent = _indent(line)
            continue
        if stripped.startswith(("..", ">>>", "...", "+", "|", "* ", "- ", "#", ":")) or re.match(r"^\d+\.\s", stripped):
            flush_block()   # directives' own lines, doctests, tables, list items, field lists
            continue
        if block and _indent(line) != block_indent:
            flush_block()
        if not block:
            block_indent = _indent(line)
        block.append(stripped)
        if stripped.endswith("::"):
            flush_block()
            literal_indent = _indent(line)
    flush_block()
    flush_section()
    return sections


def python_doc_sections(root: Path) -> list[Section]:
    sources = root / "usr/share/doc/python3.11/html/_sources"
    keep = ("tutorial", "howto", "faq", "library", "reference", "glossary", "using", "installing")
    out = []
    for path in sorted(sources.rglob("*.rst.txt")):
        if path.relative_to(sources).parts[0].startswith(keep):
            out.extend(rst_sections(path))
    return out


# --- Debian Administrator's Handbook (HTML) ---------------------------------------------------

class _HandbookParser(html.parser.HTMLParser):
    """Collects <h1>-<h3> titles and the paragraphs (<div class="para">) under them, skipping
    program listings, tables and lists inside a paragraph."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.source = source
        self.sections: list[Section] = []
        self._title = None
        self._paragraphs: list[str] = []
        self._capture: str | None = None
        self._text: list[str] = []
        self._skip = 0
        self._div_depth = 0   # <div>s opened inside the paragraph being captured

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "table", "script", "style", "ul", "ol"):
            self._skip += 1
        elif tag in ("h1", "h2", "h3"):
            self._capture, self._text = "title", []
        elif tag == "div" and self._capture == "para":
            self._div_depth += 1
        elif tag == "div" and "para" in (dict(attrs).get("class") or "").split() and not self._skip:
            self._capture, self._text, self._div_depth = "para", [], 0

    def handle_endtag(self, tag):
        if tag in ("pre", "table", "script", "style", "ul", "ol"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("h1", "h2", "h3") and self._capture == "title":
            self._finish_section()
            self._title = re.sub(r"^[\d.]+\s*", "", _clean("".join(self._text)))
            self._capture = None
        elif tag == "div" and self._capture == "para":
            if self._div_depth:
                self._div_depth -= 1
                return
            text = _clean("".join(self._text))
            if reads_like_prose(text):
                self._paragraphs.append(text)
            self._capture = None

    def handle_data(self, data):
        if self._capture and not self._skip:
            self._text.append(data)

    def _finish_section(self):
        if self._title and self._paragraphs:
            self.sections.append(Section(self._title, self._paragraphs, self.source))
        self._paragraphs = []

    def close(self):
        super().close()
        self._finish_section()


def handbook_sections(root: Path) -> list[Section]:
    pages = root / "usr/share/doc/debian-handbook/html/en-US"
    out = []
    for path in sorted(pages.glob("*.html")):
        parser = _HandbookParser(f"debian-handbook:{path.name}")
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        out.extend(parser.sections)
    return out


def load_sections(work: Path) -> list[Section]:
    root = fetch_packages(work)
    return python_doc_sections(root) + handbook_sections(root)


if __name__ == "__main__":
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
        sections = load_sections(work)
        for prefix in ("python3.11-doc", "debian-handbook"):
            part = [s for s in sections if s.source.startswith(prefix)]
            words = sum(len(p.split()) for s in part for p in s.paragraphs)
            print(f"{prefix}: {len(part)} sections, {words} words")
        for s in sections[::max(1, len(sections) // 8)]:
            print(f"## {s.title} ({s.source})\n{s.paragraphs[0][:300]}\n")
