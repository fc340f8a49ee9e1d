"""Moderation of live comments with better-profanity (its word list ships with the package).

Replies to each comment with `live.result.moderation`: whether it is profane and the censored text.
better-profanity's own `censor` compares every word against every variant of its ~900 words (about
10 ms per comment), too slow for a burst of thousands per second on two cores; so words are looked
up in a set built from the same word list, and only comments with look-alike characters
(`sh1t`, `@ss`) take the library's full check."""
import os
import re

import better_profanity
from better_profanity import profanity

from cloudevent_function import serve

profanity.load_censor_words()
with open(os.path.join(os.path.dirname(better_profanity.__file__), "profanity_wordlist.txt")) as f:
    WORDS = {line.strip().lower() for line in f if line.strip()}
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
LOOKALIKE = re.compile(r"[a-z][0-9@$*]|[0-9@$*][a-z]")


def moderate(text):
    lower = text.lower()
    if LOOKALIKE.search(lower):
        censored = profanity.censor(text)
        return censored != text, censored
    hits = {w for w in WORD.findall(lower) if w in WORDS}
    if not hits:
        return False, text
    return True, re.sub(r"[A-Za-z]+(?:'[A-Za-z]+)?", lambda m: "****" if m.group(0).lower() in hits else m.group(0), text)


def handle(attrs, data):
    profane, censored = moderate(str(data["text"]))
    return "live.result.moderation", {
        "comment_id": data["id"],
        "stream": data.get("stream"),
        "sent_at": data.get("sent_at"),
        "profane": profane,
        "text": censored,
    }


serve(handle, "/functions/moderation")
