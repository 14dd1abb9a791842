"""The basic DP training loop: Poisson batches → forward_backward → optim_step.

python examples/basic_loop.py --model smollm2-135m-instruct --steps 10
"""

from __future__ import annotations

from _common import connect, dp_config, note_dataset, parser
from tg_tinker.data import PoissonBatchSampler


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    with connect(args) as service:
        tc = service.create_lora_training_client(args.model, rank=8, dp_config=dp_config(args))
        dataset = note_dataset(tc.get_tokenizer(), args.dataset_size)
        sampler = PoissonBatchSampler(
            len(dataset), sample_rate=args.batch / len(dataset), num_steps=args.steps
        )
        for indices in sampler:
            if len(indices):  # Poisson batches can be empty: still take the noisy step
                fb = tc.forward_backward([dataset[i] for i in indices]).result()
                print(f"batch of {len(indices)}: loss {fb.loss:.4f}, grad norm {fb.grad_norm:.4f}")
            step = tc.optim_step().result()
            print(f"step {step.step}: ε = {step.dp_metrics.epsilon_spent:.3f}")
        print(f"done: run {tc.run_id} at step {tc.step}, status {tc.status}")


if __name__ == "__main__":
    main()
