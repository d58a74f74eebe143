"""Benchmark prompts of several kinds: code, instructions, math, and editing given text.

Each is a chat message for the instruct models; the editing ones repeat their input, which is
where prompt lookup (the n-gram drafter) can shine.
"""

from __future__ import annotations

EDIT_SOURCE = '''def total_price(items, tax):
    total = 0
    for item in items:
        total = total + item["price"] * item["qty"]
    total = total + total * tax
    return total
'''

PROMPTS: dict[str, list[str]] = {
    "code": [
        "Write a Python class for a stack with push, pop and peek methods.",
    ],
    "instruction": [
        "Explain in a few sentences what a hash table is and when to use one.",
    ],
    "math": [
        "Solve step by step: a train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    ],
    "editing": [
        "Rename the variable `total` to `amount` in this code and return the whole code:\n\n" + EDIT_SOURCE,
        "Add type hints to this function and return the whole code:\n\n" + EDIT_SOURCE,
    ],
}


def all_prompts(kinds: list[str] | None = None) -> list[tuple[str, str]]:
    """(kind, text) pairs, in a fixed order."""
    return [(kind, text) for kind, texts in PROMPTS.items() if not kinds or kind in kinds for text in texts]
