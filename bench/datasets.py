"""Server-held datasets: upload throughput, and what server-side drawing costs a step.

* **Upload**: ``ServiceClient.create_dataset`` of ``--records`` records (``--tokens``
  tokens each, with ``target_tokens`` and ``weights``) to a ``tensafe serve`` subprocess
  on 127.0.0.1 (SQLite, local store): records/s and MB/s of JSON sent, and the server's
  peak resident memory before and after (bounded memory: one shard buffered at a time).
* **Drawing**: a run's per-step server work for a server-held dataset — a Poisson draw
  (q·N = ``--batch``) from the CSPRNG and reading the drawn records, decrypting the
  shards they live in (a small cache keeps recent ones) — timed over ``--draws`` steps
  in-process on the uploaded dataset, beside one DP-LoRA step of ``--model`` on a batch
  of ``--batch`` × ``--tokens`` (what that work is added to). The ratio is the share of
  a step (target ≤ 2 % on SmolLM2-135M).

    python bench/datasets.py --json                       # 100 000 records, SmolLM2
    python bench/datasets.py --records 20000 --model tiny-llama

The last line of ``--json`` output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk"), str(Path(__file__).parent)]

from server_overhead import _Server  # noqa: E402

VOCAB = 49152


def _records(n: int, tokens: int, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = rng.integers(0, VOCAB, size=tokens + 1).tolist()
        yield {
            "tokens": ids[:-1],
            "fields": {"target_tokens": ids[1:], "weights": [1.0] * tokens},
        }


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(server: _Server, api_key: str, args: argparse.Namespace) -> dict[str, object]:
    from tg_tinker import ServiceClient

    assert server.process is not None
    before = _peak_rss_mib(server.process.pid)
    sent = len(json.dumps(next(iter(_records(1, args.tokens)))))  # bytes per record, about
    with ServiceClient(server.url, api_key=api_key, timeout=600) as service:
        start = time.perf_counter()
        info = service.create_dataset("bench", _records(args.records, args.tokens), progress=False)
        seconds = time.perf_counter() - start
    return {
        "dataset_id": info.dataset_id,
        "records": info.num_records,
        "upload_s": seconds,
        "records_per_s": info.num_records / seconds,
        "json_mb_per_s": info.num_records * sent / seconds / 1e6,
        "stored_mib": info.size_bytes / 2**20,
        "server_peak_rss_mib_before": before,
        "server_peak_rss_mib_after": _peak_rss_mib(server.process.pid),
    }


def drawing(server: _Server, tenant_id: str, dataset_id: str, args: argparse.Namespace) -> dict:
    from server.db.session import Database
    from server.services.dataset_reader import DatasetReader
    from server.services.drawn_batches import draw, drawn_datums
    from server.services.keys import build_keyring
    from server.settings import Settings
    from server.storage import LocalArtifactStore

    settings = Settings(environment="development", data_dir=server.data_dir)
    db = Database(settings.resolved_database_url())
    keyring = build_keyring(settings, db)
    store = LocalArtifactStore(settings.resolved_artifact_dir())
    reader = DatasetReader(db, store, keyring, tenant_id=tenant_id, dataset_id=dataset_id)
    rate = args.batch / len(reader)
    times, sizes = [], []
    for _ in range(args.draws):
        start = time.perf_counter()
        pending = draw(reader, rate=rate, max_records_per_unit=1)
        datums, _groups = drawn_datums(reader, pending)
        times.append(time.perf_counter() - start)
        sizes.append(len(datums))
    db.dispose()
    return {
        "draw_and_read_ms_p50": 1e3 * statistics.median(times),
        "draw_and_read_ms_mean": 1e3 * statistics.fmean(times),
        "draw_and_read_ms_p95": 1e3 * sorted(times)[int(0.95 * len(times))],
        "mean_batch": statistics.fmean(sizes),
        "draws": args.draws,
    }


def dp_step_seconds(args: argparse.Namespace) -> float:
    from tensafe.engine import TrainingEngine
    from tensafe.models import LoRAConfig, load_causal_lm
    from tensafe.privacy import DPConfig

    engine = TrainingEngine(
        model=load_causal_lm(args.model),
        lora_config=LoRAConfig(rank=16, alpha=32),
        dp_config=DPConfig(
            noise_multiplier=1.0, dataset_size=args.records, expected_batch_size=args.batch
        ),
        seed=0,
    )
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, size=(args.batch, args.tokens + 1))
    batch = {"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()}
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        engine.forward_backward(batch)
        engine.optim_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="q·N, the expected batch")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = _Server(Path(tmp))
        server.start()
        try:
            tenant = json.loads(server.tensafe("admin", "create-tenant", "bench", "--json"))
            up = upload(server, tenant["api_key"], args)
        finally:
            server.stop()
        draws = drawing(server, tenant["tenant_id"], str(up["dataset_id"]), args)
    step = dp_step_seconds(args)
    out = {
        "upload": up,
        "drawing": draws,
        "dp_step_s": step,
        "draw_share_of_step": draws["draw_and_read_ms_mean"] / 1e3 / step,
        "model": args.model,
    }
    if not args.json:
        print(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
