"""Pipelining: queue forward_backward and optim_step for several batches, then wait.

Operations on one run execute on the server in submission order, so the client
does not need to wait between them. Also shows a timeout with cancellation.

    python examples/pipelining.py --steps 5
"""

from __future__ import annotations

from _common import connect, dp_config, note_dataset, parser
from tg_tinker import FutureTimeoutError
from tg_tinker.data import PoissonBatchSampler


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    with connect(args) as service:
        tc = service.create_lora_training_client(args.model, rank=8, dp_config=dp_config(args))
        dataset = note_dataset(tc.get_tokenizer(), args.dataset_size)
        sampler = PoissonBatchSampler(
            len(dataset), sample_rate=args.batch / len(dataset), num_steps=args.steps
        )
        futures = []
        for i, indices in enumerate(sampler):
            if len(indices):
                futures.append(("fb", i, tc.forward_backward([dataset[j] for j in indices])))
            futures.append(("opt", i, tc.optim_step()))
        print(f"queued {len(futures)} operations without waiting")
        for kind, i, future in futures:
            result = future.result(timeout=600)
            if kind == "fb":
                print(f"batch {i}: loss {result.loss:.4f}")
            else:
                print(f"batch {i}: step {result.step}, ε = {result.dp_metrics.epsilon_spent:.3f}")
        # a bounded wait, and cancelling what has not started yet
        late = tc.save_state("pipelined")
        try:
            print("checkpoint:", late.result(timeout=0.001).artifact_id)
        except FutureTimeoutError:
            print("not finished within 1 ms; cancelled:", late.cancel())


if __name__ == "__main__":
    main()
