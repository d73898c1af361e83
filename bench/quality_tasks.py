"""The small tasks of bench/quality.py, generated from a seed: each a list of chat examples
whose last assistant message is the only right answer (scored by exact match).

- extraction: a customer message -> compact JSON with four fields (name, order id, issue
  as one of four labels the message never spells out, date);
- classification: a support ticket -> one of five labels;
- style: a plain notice -> the same notice in a house voice (fixed word swaps, a greeting
  and a sign-off).
"""

from __future__ import annotations

import json
import random
from typing import Any

FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hugo", "Ines", "Jon", "Kaito", "Lena", "Mo", "Nora"]
LAST = ["Silva", "Okafor", "Martin", "Patel", "Yilmaz", "Adeyemi", "Chen", "Laurent", "Costa", "Berg", "Sato", "Novak"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
ISSUES = {
    "damaged": ["arrived broken", "came with a cracked screen", "was crushed in the box", "showed up dented"],
    "late": ["came two weeks after the promised date", "still had not shown up by the deadline", "arrived far too late"],
    "wrong_item": ["turned out to be a different product", "was the wrong colour and size", "contained someone else's order"],
    "missing_parts": ["had no charger inside", "was missing two screws", "came without the manual and the cable"],
}
EXTRACTION_TEMPLATES = [
    "Hi, this is {name}. My order {order} {issue} on {date}.",
    "{name} here - order {order} {issue}, {date}. Please help.",
    "Hello, order {order} {issue} ({date}). Regards, {name}",
    "On {date} my package {issue}. Order number {order}. {name}",
]
EXTRACTION_SYSTEM = "Extract name, order_id, issue and date from the message as JSON."

TICKETS = {
    "billing": ["I was charged twice for {thing}", "the invoice for {thing} shows the wrong amount", "refund my {thing} payment"],
    "bug": ["the app crashes when I open {thing}", "{thing} shows an error page", "{thing} freezes after the update"],
    "account": [
        "I cannot log in to see {thing}",
        "please reset my password for {thing}",
        "change the email on my {thing} profile",
    ],
    "feature_request": [
        "could you add dark mode to {thing}",
        "it would be great if {thing} had an export button",
        "please support {thing} on tablets",
    ],
    "shipping": ["where is my {thing} parcel", "the courier lost my {thing}", "can I change the delivery address for {thing}"],
}
THINGS = [
    "the dashboard",
    "my subscription",
    "the mobile app",
    "order 4471",
    "the premium plan",
    "the settings page",
    "my headphones",
]
OPENERS = ["", "Hi, ", "Hello team, ", "Urgent: ", "Quick question - "]
CLASSIFICATION_SYSTEM = "Label the ticket: billing, bug, account, feature_request or shipping."

STYLE_SYSTEM = "Rewrite the notice in the house voice."
NOTICES = [
    "Your {item} is ready for pickup at the {place}.",
    "The {place} is closed on {day} for repairs.",
    "Your {item} will be delivered to the {place} on {day}.",
    "The {item} you ordered is back in stock at the {place}.",
]
ITEMS = ["parcel", "bike", "lamp", "coffee grinder", "desk", "printer", "guitar"]
PLACES = ["front desk", "north store", "harbour office", "main warehouse", "city branch"]
DAYS = ["Monday", "Tuesday", "Friday", "Saturday"]
SWAPS = {"your": "yer", "the": "th'", "is": "be", "you": "ye", "for": "fer"}


def _chat(system: str, user: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def extraction(rng: random.Random) -> dict[str, Any]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    order = f"ORD-{rng.randint(10000, 99999)}"
    label = rng.choice(sorted(ISSUES))
    date = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    text = rng.choice(EXTRACTION_TEMPLATES).format(name=name, order=order, issue=rng.choice(ISSUES[label]), date=date)
    answer = json.dumps({"name": name, "order_id": order, "issue": label, "date": date})
    return _chat(EXTRACTION_SYSTEM, text, answer)


def classification(rng: random.Random) -> dict[str, Any]:
    label = rng.choice(sorted(TICKETS))
    text = rng.choice(OPENERS) + rng.choice(TICKETS[label]).format(thing=rng.choice(THINGS))
    return _chat(CLASSIFICATION_SYSTEM, text[0].upper() + text[1:] + rng.choice([".", "!", "?", ""]), label)


def house_voice(notice: str) -> str:
    words = [SWAPS.get(w.lower(), w) for w in notice.split(" ")]
    return "Ahoy! " + " ".join(words) + " Fair winds!"


def style(rng: random.Random) -> dict[str, Any]:
    notice = rng.choice(NOTICES).format(item=rng.choice(ITEMS), place=rng.choice(PLACES), day=rng.choice(DAYS))
    return _chat(STYLE_SYSTEM, notice, house_voice(notice))


TASKS = {"extraction": (extraction, 64), "classification": (classification, 8), "style": (style, 48)}


def generate(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and test rows with no test prompt seen in training."""
    make, _ = TASKS[task]
    rng = random.Random(f"{task}:{seed}")
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(train) + len(test) < n_train + n_test:
        row = make(rng)
        prompt = row["messages"][1]["content"]
        if prompt in seen:
            continue
        seen.add(prompt)
        (train if len(train) < n_train else test).append(row)
    return train, test


def max_new_tokens(task: str) -> int:
    return TASKS[task][1]
