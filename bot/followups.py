"""Follow-ups in the thread: how a posted paper's news is worded. Pure.

Storage finds the news when a listing is stored (storage/followups.py) and queues one row
per event and card; the dispatcher sends each as a `ThreadReply` in the card's thread
(`Adapter.post_in_thread`). The text is plain and short; each adapter escapes it and
renders the link for its platform.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .cards import link_url
from .models import FollowUp, Link, ThreadReply

URL_MAX = 300  # a longer code address is not shown: the Hugging Face page links to it


def reply_for(followup: FollowUp) -> ThreadReply:
    """The reply a follow-up posts: one line, and a link."""
    key = f"{followup.paper_id}:{followup.kind}:{followup.value}"
    hf_page = f"https://huggingface.co/papers/{followup.paper_id}"
    if followup.kind == "code":
        # The rule cards apply: one queued before the source's link rule may be malformed.
        url = link_url(followup.url) or ""
        if url and len(url) <= URL_MAX:
            parts = urlsplit(url)
            label = (parts.netloc.removeprefix("www.") + parts.path.rstrip("/"))[:80] or "code"
            return ThreadReply(key, "Code released", Link(label, url))
        return ThreadReply(key, "Code released", Link("Hugging Face", hf_page))
    if followup.kind == "version":
        return ThreadReply(key, f"New version v{followup.value} on arXiv",
                           Link(f"arXiv v{followup.value}", f"https://arxiv.org/abs/{followup.paper_id}v{followup.value}"))
    if followup.kind == "upvotes":
        return ThreadReply(key, f"Crossed {followup.value} upvotes on Hugging Face", Link("Hugging Face", hf_page))
    raise ValueError(f"unknown follow-up kind {followup.kind!r}")
