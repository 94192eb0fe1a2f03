"""`python -m tests.bench`: run the benchmarks side by side, write results.json, print a table.

Options: `--full` (each() over 100,000 items instead of the default), `--ai-items N`,
`--only NAME` (repeatable: sandbox, journal, replay (with replay through the sandbox), each,
resume, sheets; the results of the others stay in the file as they were), `--output PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm must not fetch prices at import

from tests import _network
from tests.bench import (
    each_ai,
    journal_throughput,
    replay,
    replay_sandbox,
    resume,
    sandbox_overhead,
    sheet_updates,
)
from tests.bench._report import Outcome, table, write_results

RESULTS = Path(__file__).with_name("results.json")
Bench = Callable[[argparse.Namespace], Awaitable[list[Outcome]]]
BENCHMARKS: dict[str, Bench] = {
    "sandbox": lambda args: sandbox_overhead.run(),
    "journal": lambda args: journal_throughput.run(),
    "replay": lambda args: _in_turn(replay.run, replay_sandbox.run),
    "each": lambda args: each_ai.run(full=args.full, items=args.ai_items),
    "resume": lambda args: resume.run(),
    "sheets": lambda args: sheet_updates.run(),
}


async def _in_turn(*benches: Callable[[], Awaitable[list[Outcome]]]) -> list[Outcome]:
    return [outcome for bench in benches for outcome in await bench()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--full", action="store_true",
                        help=f"each() over {each_ai.FULL_ITEMS:,} items (hours on a small machine)")
    parser.add_argument("--ai-items", type=int, default=None,
                        help=f"items for each() (default {each_ai.DEFAULT_ITEMS:,})")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name in args.only or list(BENCHMARKS):
        print(f"→ {name} ...", flush=True)
        load, start = os.getloadavg()[0], time.perf_counter()
        results = await guarded(name, args)
        took = time.perf_counter() - start
        for outcome in results:
            if outcome.skipped is None and outcome.error is None:
                outcome.figures.setdefault("load_avg_1min_before", round(load, 2))
            print(f"  {outcome.name}: {outcome.status}", flush=True)
        print(f"← {name} in {took:.1f} s", flush=True)
        outcomes += results
    return outcomes


async def guarded(name: str, args: argparse.Namespace) -> list[Outcome]:
    """The benchmark's outcomes; one that raises is reported as an error, and the run goes on."""
    try:
        return await BENCHMARKS[name](args)
    except Exception as exc:
        trace = traceback.format_exc().splitlines()[-12:]
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return [Outcome(name=name, title=f"{name} (did not finish)", error=message,
                        analysis=trace)]


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    _network.install()  # nothing here may reach past loopback
    started = time.perf_counter()
    outcomes = asyncio.run(run_all(args))
    options = {"full": args.full, "ai_items": args.ai_items, "only": args.only,
               "seconds": round(time.perf_counter() - started, 1)}
    write_results(args.output, outcomes, options, keep_others=bool(args.only))
    print()
    print(table(outcomes))
    print(f"\nresults: {args.output} ({options['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
