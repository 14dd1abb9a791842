"""DP-LoRA fine-tuning through the TenSafe server, end to end, with the SDK.

Registers synthetic clinical notes → structured summaries as a server-held dataset
(stored encrypted; N fixed by the server), lets the privacy officer set its ε cap,
then fine-tunes a LoRA adapter under DP-SGD on batches the *server* draws (Poisson,
from its CSPRNG), with a progress bar (loss, ε); evaluates held-out loss before and
after and shows two answers before and after side by side, generated on the server by
its SamplingClient (the base model, then the saved sampler checkpoint, decrypted only in
the server's memory); pulls the encrypted checkpoint, decrypts and verifies it locally
and loads it as a peft adapter to generate one answer again — proof that the data owner
holds the weights.
`make demo` starts a server and runs this script; against your own server set
TG_TINKER_BASE_URL and TG_TINKER_API_KEY (and TG_TINKER_OFFICER_KEY, a key with the
privacy-officer scope, for the budget — or have your privacy officer create it).

    python examples/dp_finetune.py --steps 30 [--model smollm2-135m-instruct] [--device cuda]
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import PROMPT, connect
from synthetic_notes import generate_notes
from tg_tinker import (
    DPConfig,
    LoRAConfig,
    OptimizerConfig,
    SamplingClient,
    SamplingParams,
    ServiceClient,
    TrainingConfig,
)
from tg_tinker.artifacts import decrypt_to_directory, load_key_file
from tg_tinker.data import datum_from_prompt_completion
from tqdm import tqdm

DATASET_NAME = "clinical-notes-synthetic-v1"


def _prompt_ids(tokenizer, note_text: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT + note_text}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer.encode(text, add_special_tokens=False)


def build_dataset(tokenizer, notes) -> list:
    """Chat-formatted prompt → summary (+ end of turn); loss on the summary only."""
    data = []
    for note in notes:
        prompt = list(_prompt_ids(tokenizer, note.note))
        completion = tokenizer.encode(note.summary, add_special_tokens=False)
        data.append(datum_from_prompt_completion(prompt, [*completion, tokenizer.eos_token_id]))
    return data


def local_tokenizer(model: str):
    """The model's tokenizer, on the data owner's machine: records are tokenized here."""
    from tensafe.models import load_causal_lm, load_smollm2_tokenizer

    if model == "smollm2-135m-instruct":
        return load_smollm2_tokenizer()
    return load_causal_lm(model).tokenizer


def ensure_budget(args, dataset_id: str) -> None:
    """The privacy officer sets the dataset's cap (their key, not the data scientist's)."""
    officer_key = os.environ.get("TG_TINKER_OFFICER_KEY")
    if not officer_key:
        print(f"no TG_TINKER_OFFICER_KEY: a privacy officer must create the budget of {dataset_id}")
        return
    with ServiceClient(args.base_url, officer_key) as officer:
        budget = officer.create_privacy_budget(
            dataset_id,
            epsilon_cap=args.epsilon_cap,
            delta=1e-5,
            reason="demo: synthetic clinical notes",
        )
    print(
        f"privacy officer: budget ε ≤ {budget.epsilon_cap} at δ = {budget.delta:g} for "
        f"{dataset_id} (sampling policy {budget.sampling_policy})"
    )


ANSWER = SamplingParams(max_tokens=48, temperature=0.0)  # greedy; stops at end of turn


def answers(sampler: SamplingClient, tokenizer, notes) -> list[str]:
    """Greedy answers to ``notes`` from a server-side sampler (all requests in flight at
    once: the server batches them)."""
    futures = [sampler.sample(_prompt_ids(tokenizer, n.note), 1, ANSWER) for n in notes]
    return [
        tokenizer.decode(f.result().sequences[0].tokens, skip_special_tokens=True).strip()
        for f in futures
    ]


def generate(model, tokenizer, note_text: str, *, max_new_tokens: int = 48) -> str:
    import torch

    ids = torch.tensor([_prompt_ids(tokenizer, note_text)])
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="expected batch size q·N")
    ap.add_argument("--sigma", type=float, default=0.7, help="noise multiplier σ")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="where this script generates samples")
    ap.add_argument("--out-dir", default=None, help="where pulled artifacts and the report go")
    ap.add_argument("--report", default=None, help="write the privacy audit report (HTML) here")
    ap.add_argument("--epsilon-cap", type=float, default=8.0, help="the dataset's ε cap")
    args = ap.parse_args()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="tensafe-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    tokenizer = local_tokenizer(args.model)
    train_notes = generate_notes(args.train_size, seed=1)
    held_notes = generate_notes(args.held_out, seed=2)
    held_out = build_dataset(tokenizer, held_notes)
    with connect(args) as service:
        dataset = service.create_dataset(DATASET_NAME, build_dataset(tokenizer, train_notes))
        print(
            f"dataset {dataset.dataset_id} (v{dataset.version}): {dataset.num_records} records, "
            f"stored encrypted on the server; commitment {dataset.commitment[:16]}…"
        )
        ensure_budget(args, dataset.dataset_id)
        dp = DPConfig(
            noise_multiplier=args.sigma,
            max_grad_norm=1.0,
            sample_rate=args.batch / dataset.num_records,
            dataset_id=dataset.dataset_id,  # the server draws every batch: N is the dataset's
            secure_mode=True,
        )
        tc = service.create_training_client(
            TrainingConfig(
                model_ref=args.model,
                lora_config=LoRAConfig(rank=args.rank, alpha=2 * args.rank),
                optimizer=OptimizerConfig(name="adamw", learning_rate=args.lr),
                dp_config=dp,
                metadata={"purpose": "demo", "dataset": DATASET_NAME},
            )
        )
        print(f"run {tc.run_id}: waiting for the server to load {args.model} ...", flush=True)
        info = tc.get_info()
        print(
            f"model {info.model_name} ({info.model_data.arch}), LoRA rank {info.lora_rank}, "
            f"{info.trainable_params:,} trainable parameters"
        )
        before = tc.forward(held_out).result().loss
        print(f"held-out loss before training: {before:.4f}")
        # the base model as the server holds it for this run (its adapter switched off)
        base_sampler = service.create_sampling_client(base_model=info.model_name)
        before_answers = answers(base_sampler, tokenizer, held_notes[:2])

        eps = 0.0
        bar = tqdm(range(args.steps), desc="DP-LoRA", unit="step")
        for _ in bar:
            batch = tc.draw_batch().result()  # Poisson(q) over the N records, by the server
            out = tc.forward_backward(batch).result()
            step = tc.optim_step().result()  # an empty draw still takes its noise-only step
            eps = step.dp_metrics.epsilon_spent
            loss = out.loss if batch.size else math.nan
            bar.set_postfix(loss=f"{loss:.3f}", eps=f"{eps:.2f}", batch=batch.size)
        after = tc.forward(held_out).result().loss
        print(f"held-out loss after training:  {after:.4f}  (before {before:.4f})")
        print(
            f"privacy spent: ε = {eps:.2f} at δ = {step.dp_metrics.delta:.1e} "
            f"(σ = {args.sigma}, q = {step.dp_metrics.sample_rate:.4f}, C = 1.0, "
            f"{step.dp_metrics.accountant} accountant, batches drawn by the server)"
        )

        sampler = tc.save_weights_and_get_sampling_client("demo-adapter")
        saved = service.get_artifact(sampler.info.artifact_id or "")
        print(
            f"encrypted checkpoint {saved.artifact_id} ({saved.path}): {saved.size_bytes:,} "
            f"bytes, sha256 {saved.content_hash}"
        )
        after_answers = answers(sampler, tokenizer, held_notes[:2])  # on the server
        service.pull_artifact_to_file(
            saved.artifact_id, out_dir / "adapter.tsf", expected_sha256=saved.content_hash
        )
        service.export_tenant_key(out_dir / "tenant-key.json")
        if args.report:
            report = service.audit_report(dataset.dataset_id, format="html")
            Path(args.report).write_text(report)
    decrypted = decrypt_to_directory(
        out_dir / "adapter.tsf",
        load_key_file(out_dir / "tenant-key.json"),
        out_dir / "adapter",
        expected_content_hash=saved.content_hash,
        overwrite=True,
    )
    print(
        f"pulled, decrypted and verified locally: {', '.join(decrypted.files)} in {decrypted.path}"
    )

    from peft import PeftModel

    from tensafe.models import load_causal_lm

    base = load_causal_lm(args.model, device=args.device)
    tuned = PeftModel.from_pretrained(base.model, str(decrypted.path)).eval()
    local_answer = generate(tuned, tokenizer, held_notes[0].note)  # on this machine
    for note, b, a in zip(held_notes[:2], before_answers, after_answers, strict=True):
        print("\n" + "─" * 78)
        print(f"NOTE      {note.note}")
        print(f"EXPECTED  {note.summary}")
        print(f"BEFORE    {b}")
        print(f"AFTER     {a}")
    print("─" * 78)
    same = "the same answer" if local_answer == after_answers[0] else "a different answer"
    print(
        "BEFORE/AFTER were generated on the server (SamplingClient). The pulled adapter, "
        f"decrypted and loaded here, gives {same} to the first note:\nLOCAL     {local_answer}"
    )
    if args.report:
        print(f"privacy audit report: {Path(args.report).resolve()}")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    if not after < before:
        sys.exit(f"held-out loss did not improve ({before:.4f} → {after:.4f})")


if __name__ == "__main__":
    main()
