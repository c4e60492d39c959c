"""arXiv identifiers: one canonical, version-less key for every form a source uses.

Forms seen in the wild: `2606.13677`, `2606.13677v1`, `arXiv:2604.21952v1`,
`oai:arXiv.org:2604.21952v1`, `https://arxiv.org/abs/2606.13677v1`,
`http://arxiv.org/pdf/2606.13677v2`, `https://arxiv.org/pdf/2606.13677v2.pdf`,
`https://export.arxiv.org/abs/2606.13677`, `https://huggingface.co/papers/2606.13677`,
the DOI `10.48550/arXiv.2606.13677`, old style `astro-ph/0601001v1`, `hep-th/9901001` and
`math.NA/0601001`.
"""

from __future__ import annotations

import re

_NEW = r"\d{4}\.\d{4,5}"
_OLD = r"[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7}"
# Not inside a longer number or word; a ".pdf" or a sentence's full stop may follow, and
# arXiv's DOI writes "arXiv." before the id.
_ID = re.compile(rf"(?:(?<![\w.])|(?<=[aA][rR][xX][iI][vV]\.))({_NEW}|{_OLD})(?:v\d+)?(?:\.pdf)?(?!\w|\.\w)")
_EXACT = re.compile(rf"^({_NEW}|{_OLD})(?:v\d+)?$")


def canonical_arxiv_id(text: str) -> str | None:
    """Return the version-less arXiv id found in `text` (an id, URL or OAI id), else None."""
    text = text.strip()
    for prefix in ("oai:arXiv.org:", "arXiv:", "arxiv:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    exact = _EXACT.match(text)
    if exact:
        return exact.group(1)
    found = _ID.search(text)
    return found.group(1) if found else None


_VERSION = re.compile(rf"(?:(?<![\w.])|(?<=[aA][rR][xX][iI][vV]\.))(?:{_NEW}|{_OLD})v(\d{{1,4}})(?:\.pdf)?(?!\w|\.\w)")


def arxiv_version(text: str) -> int | None:
    """The version (the N of `vN`) of the arXiv id in `text`, None when it names none."""
    found = _VERSION.search(text.strip())
    version = int(found.group(1)) if found else 0
    return version if version > 0 else None


_NEW_PARTS = re.compile(r"^(\d{2})(\d{2})\.(\d{4,5})$")


def impossible_arxiv_id(paper_id: str) -> str | None:
    """Why a canonical new-style id cannot name an arXiv paper (a month 13, five digits before
    2015, four since), None when it can: a lookup of it would only ask the sources in vain."""
    parts = _NEW_PARTS.match(paper_id)
    if parts is None:
        return None  # old style (hep-th/9901001): not checked
    year, month, number = int(parts.group(1)), int(parts.group(2)), parts.group(3)
    if not 1 <= month <= 12:
        return f"{paper_id} is not an arXiv id: {parts.group(1)}{parts.group(2)} is no year and month (YYMM)"
    if (year, month) < (7, 4):
        return f"{paper_id} is not an arXiv id: ids of this form start in April 2007 (0704)"
    if len(number) == 5 and year < 15:
        return f"{paper_id} is not an arXiv id: before 2015 ids have 4 digits after the dot (1412.6980)"
    if len(number) == 4 and year >= 15:
        return f"{paper_id} is not an arXiv id: since 2015 ids have 5 digits after the dot (2406.12345)"
    return None
