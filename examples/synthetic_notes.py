"""Synthetic clinical notes → structured summaries (no real personal data).

Every name, age, condition and medication is drawn from small fixed lists by a
seeded generator, so the data *looks* like regulated data without being any.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = [
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kara",
    "Luis",
]
LAST = ["Okafor", "Silva", "Novak", "Haddad", "Kim", "Moreau", "Rossi", "Tanaka", "Weber", "Yilmaz"]
CONDITIONS = {
    "type 2 diabetes": "metformin",
    "hypertension": "lisinopril",
    "asthma": "albuterol",
    "hypothyroidism": "levothyroxine",
    "migraine": "sumatriptan",
    "atrial fibrillation": "apixaban",
}
COMPLAINTS = [
    "fatigue",
    "headache",
    "shortness of breath",
    "dizziness",
    "chest tightness",
    "poor sleep",
]
FOLLOW_UP = ["2 weeks", "1 month", "3 months", "6 weeks"]


@dataclass(frozen=True)
class Note:
    """One synthetic note and its structured summary (the training target)."""

    note: str
    summary: str


def generate_notes(n: int, *, seed: int = 0) -> list[Note]:
    """``n`` reproducible synthetic notes."""
    rng = random.Random(seed)
    notes = []
    for _ in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        age = rng.randint(23, 88)
        condition, drug = rng.choice(sorted(CONDITIONS.items()))
        complaint = rng.choice(COMPLAINTS)
        follow = rng.choice(FOLLOW_UP)
        note = (
            f"{name}, {age} years old, seen today for {complaint}. History of {condition}, "
            f"currently on {drug}. Plan: continue {drug}, review in {follow}."
        )
        summary = (
            f"Patient: {name} | Age: {age} | Condition: {condition} | "
            f"Medication: {drug} | Follow-up: {follow}"
        )
        notes.append(Note(note=note, summary=summary))
    return notes


__all__ = ["Note", "generate_notes"]
