"""Small labeled request sets for router tests: a generated one, and the shared real dataset when present."""

import json
import os
import random
from pathlib import Path

SHARED = Path(os.environ.get("MOR_ROUTING_DATA", Path(__file__).resolve().parents[2] / "shared/data/routing"))

TEMPLATES = {
    "math": ["Solve {a}x + {b} = {c} for x.", "What is {a} times {b} plus {c}?", "Compute the integral of x^{a}.",
             "Find the derivative of {a}x^2 + {b}x.", "Simplify the fraction {a}/{c}."],
    "code": ["Write a Python function that returns the {w} of a list.", "Fix this bug in my JavaScript {w} loop.",
             "Implement a {w} class in Rust with tests.", "Why does my SQL query on the {w} table fail?"],
    "creative": ["Write a short poem about a {w}.", "Tell me a story where a {w} learns to fly.",
                 "Compose song lyrics about the {w} at night.", "Write a haiku about a {w}."],
    "knowledge": ["Who invented the {w}?", "When was the first {w} built in Europe?",
                  "What is the capital city of the country famous for its {w}?", "Explain the history of the {w}."],
    "reasoning": ["If every {w} is blue and Tom owns a {w}, what colour is it?",
                  "Alice is taller than Bob and Bob is taller than the {w}; who is shortest?",
                  "Three boxes hold a {w}, a key and a coin; which box is last if the key is first?"],
    "tool": ["Book me a table for {a} people tonight near the {w}.", "Check the weather forecast for {w} city.",
             "Send an email to my team about the {w} meeting at {a} pm.", "Find flights to {w} under {c} dollars."],
}
WORDS = ["river", "dragon", "maximum", "cat", "queue", "lighthouse", "sum", "forest", "tree", "robot"]


def generated(n_per_label: int, seed: int = 0) -> list[dict]:
    """Templated requests: easy to separate, so tests can check that training works, not how well."""
    rng = random.Random(seed)
    rows = []
    for label, templates in TEMPLATES.items():
        for _ in range(n_per_label):
            text = rng.choice(templates).format(a=rng.randint(2, 9), b=rng.randint(1, 50), c=rng.randint(1, 99),
                                                w=rng.choice(WORDS))
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
