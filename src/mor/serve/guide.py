"""The example system's fallback expert: when no other expert fits, it says what the service can answer."""

GUIDE = ("I route each question to the expert that fits it. This example service has a math solver (try "
         "'solve 2x + 3 = 11' or 'integrate x^2 from 0 to 1') and a search over mor's documentation (try 'what "
         "does the reflection halting rule do'). Put your own models in the system config to answer more.")


def guide(question: str) -> tuple[str, float]:
    """The guide text, with a low confidence so that any confident expert's answer wins over it."""
    return GUIDE, 0.1
