"""Cost of the pre-step budget check at 10,000 steps, and how much it over-estimates ε.

Per step, the service calls ``DatasetBudget.check_step`` (before the noise is drawn)
and ``DatasetBudget.record_step`` (the charge), then appends one chained ledger row.
This benchmark times exactly those pure-library calls (no database; the server's
``bench/ledger_overhead.py`` adds SQL), 10,000 steps into each run:

* ``1 run``            — one run, σ = 1.0, q = 0.01 (ε ≈ 6.2 at 10,000 steps);
* ``4 runs, same σ,q`` — four runs × 10,000 steps, σ = 2.0, q = 0.01: one
  composition of 40,000 steps;
* ``4 runs, distinct`` — four runs × 10,000 steps with σ = 1.6, 1.8, 2.0, 2.2: four
  classes composed (the expensive case: one PRV evaluation ≈ 1–3 s).

Each case starts from a budget restored at ``10,000 − window`` steps per run (as a
server does from its ledger after a restart) and takes ``window`` more steps per run,
interleaved round-robin. Two modes, side by side:

* **tight loop** — steps back to back, no background thread: every grid crossing is
  evaluated inline, so the mean is the fully amortised cost (recomputations included);
* **prefetch** — a background thread evaluates the next grid point while a simulated
  training step (``--step-gap-ms``) runs, as in the service.

Also reported: the cost of one ledger ``append`` (HMAC-SHA256 and validation), the
mean time of one ε evaluation (the cost the cache avoids), and the over-estimate
``conservative / exact − 1`` at the end of each case and at the worst point of a grid
cell.

    python bench/epsilon_schedule.py --json           # last line: one JSON object
    python bench/epsilon_schedule.py --window 100 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tensafe.audit.ledger import GENESIS, ChainHead, append, utc_timestamp
from tensafe.privacy.budget import DatasetBudget, accounting_versions
from tensafe.privacy.schedule import EpsilonSchedule

DELTA = 1e-5
Q = 0.01
RUN_STEPS = 10_000
KEY = bytes(range(32))


@dataclass(frozen=True)
class Case:
    name: str
    sigmas: tuple[float, ...]  # one run per entry


CASES = (
    Case("1 run", (1.0,)),
    Case("4 runs, same σ,q", (2.0, 2.0, 2.0, 2.0)),
    Case("4 runs, distinct", (1.6, 1.8, 2.0, 2.2)),
)


def restored_budget(case: Case, start: int, executor: ThreadPoolExecutor | None) -> DatasetBudget:
    state = {
        "format": 1,
        "dataset_id": "bench",
        "epsilon_cap": 1e6,
        "delta": DELTA,
        "accountant": "prv",
        "epsilon_schedule": EpsilonSchedule(delta=DELTA).spec,
        "histories": {f"run-{i}": [[s, Q, start]] for i, s in enumerate(case.sigmas)},
    }
    return DatasetBudget.from_state(state, executor=executor)


def run_case(case: Case, *, window: int, gap_s: float, prefetch: bool) -> dict[str, object]:
    executor = ThreadPoolExecutor(max_workers=1) if prefetch else None
    budget = restored_budget(case, RUN_STEPS - window, executor)
    runs = [(f"run-{i}", s) for i, s in enumerate(case.sigmas)]
    # Warm-up (not timed): the restored state's first evaluations, as after a restart.
    for run_id, sigma in runs:
        budget.check_step(run_id=run_id, noise_multiplier=sigma, sample_rate=Q)
        budget.record_step(run_id=run_id, noise_multiplier=sigma, sample_rate=Q)
    before = budget.schedule.stats()
    times: list[float] = []
    wall = time.perf_counter()
    for _ in range(window - 1):
        for run_id, sigma in runs:
            if gap_s:
                time.sleep(gap_s)  # the training step (forward, backward, noise)
            started = time.perf_counter()
            decision = budget.check_step(run_id=run_id, noise_multiplier=sigma, sample_rate=Q)
            assert decision.allowed
            budget.record_step(run_id=run_id, noise_multiplier=sigma, sample_rate=Q)
            times.append(time.perf_counter() - started)
    wall = time.perf_counter() - wall
    after = budget.schedule.stats()
    if executor is not None:
        executor.shutdown(wait=True)
    evaluations = after.evaluations - before.evaluations
    eval_seconds = after.evaluation_seconds - before.evaluation_seconds
    times_ms = sorted(t * 1e3 for t in times)
    result: dict[str, object] = {
        "case": case.name,
        "mode": "prefetch" if prefetch else "tight loop",
        "steps_timed": len(times),
        "run_steps_at_end": budget.steps("run-0"),
        "dataset_steps_at_end": budget.steps(),
        "epsilon_at_end": budget.epsilon(),
        "p50_ms": statistics.median(times_ms),
        "p90_ms": times_ms[int(0.9 * (len(times_ms) - 1))],
        "max_ms": times_ms[-1],
        "mean_ms": statistics.fmean(times_ms),
        "evaluations": evaluations,
        "evaluation_mean_ms": eval_seconds / evaluations * 1e3 if evaluations else 0.0,
        "evaluation_cpu_per_step_ms": eval_seconds / len(times) * 1e3,
        "wall_s": wall,
    }
    if not prefetch:
        result["overestimate_pct"] = overestimate_pct(budget)
    return result


def overestimate_pct(budget: DatasetBudget) -> float:
    """Largest ``conservative / exact − 1`` (in %) over the dataset and every run."""
    values = [budget.epsilon() / budget.exact_epsilon() - 1.0]
    for run_id in budget.histories:
        values.append(budget.run_epsilon(run_id) / budget.exact_run_epsilon(run_id) - 1.0)
    return 100.0 * max(values)


def worst_cell_overestimate_pct(schedule: EpsilonSchedule, sigma: float, near: int) -> float:
    """The over-estimate one step past a grid point (where rounding is largest)."""
    low = schedule.grid_point(near)
    n = low + 1
    counts = {(sigma, Q): n}
    return 100.0 * (schedule.epsilon(counts) / schedule.exact_epsilon(counts) - 1.0)


def ledger_append_ms(samples: int = 2000) -> float:
    schedule = EpsilonSchedule(delta=DELTA)
    versions = accounting_versions(schedule)
    head = GENESIS
    times = []
    for i in range(samples):
        row = {
            "kind": "dp_step", "tenant_id": "t", "dataset_id": "bench", "run_id": "run-0",
            "step": i + 1, "noise_multiplier": 1.0, "sample_rate": Q, "max_grad_norm": 1.0,
            "dataset_size": 100_000, "delta": DELTA, "accountant": "prv",
            "epsilon_step": 0.2, "epsilon_run_total": 6.2, "epsilon_dataset_total": 6.2,
            "cap": 8.0, "library_versions": versions, "created_at": utc_timestamp(),
        }  # fmt: skip
        started = time.perf_counter()
        event = append(head, row, KEY)
        times.append(time.perf_counter() - started)
        head = ChainHead.after(event)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--window", type=int, default=200, help="timed steps per run")
    parser.add_argument("--step-gap-ms", type=float, default=100.0, help="simulated step time")
    parser.add_argument("--quick", action="store_true", help="skip the prefetch mode")
    parser.add_argument("--case", action="append", help="run only these cases (by name)")
    args = parser.parse_args()

    results = []
    for case in [c for c in CASES if not args.case or c.name in args.case]:
        window = (
            args.window
            if len(case.sigmas) == 1 or case.sigmas[0] == case.sigmas[1]
            else max(25, args.window // 2)
        )
        modes = [False] if args.quick else [False, True]
        for prefetch in modes:
            r = run_case(case, window=window, gap_s=args.step_gap_ms / 1e3 if prefetch else 0.0,
                         prefetch=prefetch)  # fmt: skip
            results.append(r)
            print(
                f"{r['case']:<18} {r['mode']:<10} steps {r['steps_timed']:>5}  "
                f"p50 {r['p50_ms']:8.4f} ms  p90 {r['p90_ms']:8.4f} ms  "
                f"mean {r['mean_ms']:8.3f} ms  max {r['max_ms']:8.1f} ms  "
                f"evals {r['evaluations']:>3} × {r['evaluation_mean_ms']:7.1f} ms  "
                f"ε {r['epsilon_at_end']:.4f}"
                + (f"  over +{r['overestimate_pct']:.3f} %" if "overestimate_pct" in r else ""),
                flush=True,
            )
    schedule = EpsilonSchedule(delta=DELTA)
    worst = max(worst_cell_overestimate_pct(schedule, s, RUN_STEPS) for s in (1.0, 2.0))
    append_ms = ledger_append_ms()
    tight = [r for r in results if r["mode"] == "tight loop"]
    over = max([worst, *(float(r["overestimate_pct"]) for r in tight)])
    p50 = max(float(r["p50_ms"]) for r in results)
    eval_ms = max(float(r["evaluation_mean_ms"]) for r in tight)
    print(f"worst over-estimate one step past a grid point: +{worst:.3f} % "
          f"(bound: +{100 * schedule.relative_spacing:.2f} %)")  # fmt: skip
    print(f"ledger append (HMAC + validation): {append_ms:.4f} ms per row")
    print(f"a cached check + charge costs 1/{eval_ms / p50:,.0f} of one ε evaluation")
    summary = {
        "budget_check_ms_p50": p50,
        "budget_check_ms_p90": max(float(r["p90_ms"]) for r in results),
        "budget_check_ms_mean": max(float(r["mean_ms"]) for r in tight),
        "budget_check_ms_mean_prefetch": max(
            (float(r["mean_ms"]) for r in results if r["mode"] == "prefetch"), default=None
        ),
        "max_overestimate_pct": over,
        "overestimate_bound_pct": 100 * schedule.relative_spacing,
        "ledger_append_pure_ms_p50": append_ms,
        "prv_evaluation_ms_max_mean": eval_ms,
        "run_steps": RUN_STEPS,
        "cases": results,
    }
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
