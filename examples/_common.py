"""Shared set-up for the example scripts: connection, arguments, a small dataset.

Every example reads the server address and API key from ``TG_TINKER_BASE_URL`` and
``TG_TINKER_API_KEY`` (or ``--base-url`` / ``--api-key``) and trains on synthetic
clinical notes tokenized with the run's own tokenizer.
"""

from __future__ import annotations

import argparse

from synthetic_notes import generate_notes
from tg_tinker import DPConfig, ServiceClient
from tg_tinker.data import datum_from_prompt_completion

PROMPT = "Summarise this clinical note as 'Patient | Age | Condition | Medication | Follow-up'.\n\n"


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--base-url", default=None, help="default: $TG_TINKER_BASE_URL")
    ap.add_argument("--api-key", default=None, help="default: $TG_TINKER_API_KEY")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dataset-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="expected batch size q·N")
    ap.add_argument("--sigma", type=float, default=1.0, help="noise multiplier σ")
    ap.add_argument(
        "--dataset-id",
        default="synthetic-notes",
        help="the dataset whose privacy budget the run is charged to (an admin creates it: "
        "tensafe admin create-budget TENANT synthetic-notes --epsilon-cap E)",
    )
    return ap


def connect(args: argparse.Namespace) -> ServiceClient:
    return ServiceClient(args.base_url, args.api_key)


def dp_config(args: argparse.Namespace) -> DPConfig:
    return DPConfig(
        noise_multiplier=args.sigma,
        max_grad_norm=1.0,
        dataset_size=args.dataset_size,
        expected_batch_size=args.batch,
        dataset_id=args.dataset_id,
    )


def note_dataset(tokenizer, n: int, *, seed: int = 1) -> list:
    """``n`` prompt→summary datums, loss on the summary only."""
    data = []
    for note in generate_notes(n, seed=seed):
        prompt = tokenizer.encode(PROMPT + note.note + "\nSummary: ", add_special_tokens=False)
        completion = tokenizer.encode(note.summary, add_special_tokens=False)
        data.append(datum_from_prompt_completion(prompt, completion))
    return data
