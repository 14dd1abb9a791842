"""Checkpoint and resume: save_state with metadata, then continue in a new client.

The checkpoint holds weights, optimizer state and the privacy accountant's
history, so ε continues from where it was — it never restarts at zero.

    python examples/checkpoint_resume.py --steps 3
"""

from __future__ import annotations

from _common import connect, dp_config, note_dataset, parser
from tg_tinker.data import PoissonBatchSampler


def train(tc, dataset, args) -> float:
    sampler = PoissonBatchSampler(
        len(dataset), sample_rate=args.batch / len(dataset), num_steps=args.steps
    )
    eps = 0.0
    for indices in sampler:
        if len(indices):
            tc.forward_backward([dataset[i] for i in indices])
        eps = tc.optim_step().result().dp_metrics.epsilon_spent
    return eps


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    with connect(args) as service:
        tc = service.create_lora_training_client(args.model, rank=8, dp_config=dp_config(args))
        dataset = note_dataset(tc.get_tokenizer(), args.dataset_size)
        eps = train(tc, dataset, args)
        checkpoint = tc.save_state("epoch-1", metadata={"epoch": 1, "dataset_version": "v1"})
        print(
            f"saved {checkpoint.artifact_id} ({checkpoint.size_bytes} bytes, "
            f"sha256 {checkpoint.content_hash[:16]}…) at step {tc.step}, ε = {eps:.3f}"
        )
        # Resume in a fresh client, as after a restart of your training script.
        resumed = service.create_training_client_from_state(checkpoint.path)
        print(f"resumed run {resumed.run_id} at step {resumed.step}")
        eps2 = train(resumed, dataset, args)
        print(f"after resuming: step {resumed.step}, ε = {eps2:.3f} (was {eps:.3f})")
        assert eps2 > eps, "ε must carry over from the checkpoint"


if __name__ == "__main__":
    main()
