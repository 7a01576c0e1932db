"""Surface style is the source, not the label: the head can also train on a plain copy of each request.

In the routing data each label comes from one or two sources, and their style comes with it: no Natural
Questions request ends with a question mark, almost every GSM8K or HelloBench question does. A head trained on
those can learn the final mark as the label, and route a knowledge question from elsewhere by how it is typed.
A plain copy (lowercase, as both encoders read text anyway; whitespace collapsed; trailing ? . ! removed) of
each training request, with the same label, leaves the words to tell labels apart. `HeadConfig.plain_copies`
(`mor route train --plain-copies`) turns it on; it is off by default because on the shared data it traded dev
accuracy for unseen sources (docs/BENCHMARKS.md).
"""

import re

_SPACE = re.compile(r"\s+")
_END = re.compile(r"[?.!]+$")


def plain(text: str) -> str:
    """`text` lowercased, its whitespace collapsed and its trailing ? . ! removed (itself if nothing is left)."""
    return _END.sub("", _SPACE.sub(" ", text).strip().lower()) or text

