"""Gradient accumulation: several forward_backward calls, one optim_step.

Under DP the micro-batches together form one logical batch: their clipped
per-example gradients are summed, noise is added once, and the sum is divided by
the expected *logical* batch size.

    python examples/gradient_accumulation.py --micro-batches 4
"""

from __future__ import annotations

from _common import connect, dp_config, note_dataset, parser
from tg_tinker import LoRAConfig, TrainingConfig
from tg_tinker.data import PoissonBatchSampler


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--micro-batches", type=int, default=4)
    args = ap.parse_args()
    with connect(args) as service:
        config = TrainingConfig(
            model_ref=args.model,
            lora_config=LoRAConfig(rank=8),
            dp_config=dp_config(args),
            batch_size=max(1, args.batch // args.micro_batches),
            gradient_accumulation_steps=args.micro_batches,
        )
        tc = service.create_training_client(config)
        dataset = note_dataset(tc.get_tokenizer(), args.dataset_size)
        sampler = PoissonBatchSampler(
            len(dataset), sample_rate=args.batch / len(dataset), num_steps=args.steps
        )
        for indices in sampler:
            # split one Poisson-sampled logical batch into micro-batches
            micro = [indices[i :: args.micro_batches] for i in range(args.micro_batches)]
            for part in micro:
                if len(part):
                    tc.forward_backward([dataset[i] for i in part])
            step = tc.optim_step().result()  # one noisy update for the whole logical batch
            print(
                f"step {step.step}: {len(indices)} examples in {args.micro_batches} micro-batches, "
                f"ε = {step.dp_metrics.epsilon_spent:.3f}"
            )


if __name__ == "__main__":
    main()
