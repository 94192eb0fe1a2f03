"""The journal and its replay, below the runtime (ARCHITECTURE.md, "Durable execution").

A durable record returns only once its commit is on disk, a process killed mid-batch loses no
acknowledged write, a resumed run replays recorded calls without calling out, and a different
call at a recorded path is caught. On SQLite (the journal's own writer thread), and on Postgres
through the async engine when `SLUICE_TEST_POSTGRES_URL` is set (see tests/_database.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from codegen.models import LiteLLMModels
from core.db import JournalRow, create_engine, create_sync_sqlite_engine, migrate
from core.errors import IntegrationError
from core.settings import load_settings
from integrations.base import EffectCall
from integrations.catalog import build_local_catalog
from workers._journal_json import dump_result
from workers.effects import (
    EffectRunner,
    RunStopped,
    StopReason,
    legacy_request_hash,
    marshal_request_hash,
    request_hash,
)
from workers.journal import Journal, JournalEntry, open_store

ROW = {"__row__": ["r7", {"Name": "Ana", "Email": "ana@example.com", "Asked": "yes"}]}


def update_call(path: str, asked: str = "yes", **kwargs: Any) -> EffectCall:
    return EffectCall(integration="sheets", action="update",
                      args=[{"__row__": ["r7", {"Name": "Ana", "Asked": ""}]}, {"Asked": asked}],
                      kwargs=kwargs, handle=("sheets", "Sheet", "signups"), path=path)


async def rows_of(url: str, run_id: str) -> dict[str, tuple[str, str | None]]:
    """The committed rows of `run_id` as another process would read them: path → status, result."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(JournalRow.path, JournalRow.status,
                                              JournalRow.result)
                                       .where(JournalRow.run_id == run_id))).all()
    finally:
        await engine.dispose()
    return {path: (status, result) for path, status, result in rows}


async def test_a_durable_record_is_committed_when_it_returns(db_url: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-durable")
    try:
        entry = JournalEntry(path="each#1/item#1/call#1", kind="write", call="Sheet.update",
                             request_hash="0" * 32, status="intent")
        await journal.record(entry, durable=True)
        assert await rows_of(db_url, "run-durable") == {"each#1/item#1/call#1": ("intent", None)}

        entry.status, entry.result = "done", ROW
        await journal.record(entry, durable=True)
        committed = await rows_of(db_url, "run-durable")
        assert committed["each#1/item#1/call#1"][0] == "done"
        assert json.loads(committed["each#1/item#1/call#1"][1] or "null") == ROW
    finally:
        await journal.close()
        await engine.dispose()


async def test_a_result_json_cannot_hold_fails_its_record_and_no_other(db_url: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-bad")
    try:
        bad = JournalEntry(path="call#1", kind="read", call="x.y", request_hash="0" * 32,
                           status="done", result={"when": object()})
        with pytest.raises(TypeError, match="not JSON serializable"):
            await journal.record(bad, durable=True)
        good = JournalEntry(path="call#2", kind="read", call="x.y", request_hash="0" * 32,
                            status="done", result=[1])
        await journal.record(good, durable=True)
    finally:
        await journal.close()
        await engine.dispose()
    committed = await rows_of(db_url, "run-bad")
    assert list(committed) == ["call#2"]
    assert committed["call#2"][0] == "done" and json.loads(committed["call#2"][1] or "") == [1]


async def test_concurrent_writers_share_commits_and_reload_exactly(db_url: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-many")

    async def writer(k: int) -> None:
        for i in range(k, 640, 64):
            entry = JournalEntry(path=f"each#1/item#{i}/call#1", kind="write", call="mail.send",
                                 request_hash=f"{i:032x}", status="intent")
            await journal.record(entry, durable=True)
            await asyncio.sleep(0)
            entry.status, entry.result, entry.cost_usd = "done", f"<m{i}@x>", 0.5
            await journal.record(entry, durable=True)

    try:
        await asyncio.gather(*(writer(k) for k in range(64)))
        for i in range(5):  # reads, committed with the close
            await journal.record(JournalEntry(path=f"read#{i}", kind="read", call="Sheet.rows",
                                              request_hash="1" * 32, status="done",
                                              result=[i]), durable=False)
    finally:
        await journal.close()
    assert journal.commits < 2 * 640  # grouped: far fewer commits than durable records

    again = Journal(engine, "run-many")
    try:
        assert await again.load() == 645
        entry = again.recorded("each#1/item#17/call#1")
        assert entry is not None and entry.status == "done" and entry.value() == "<m17@x>"
        read = again.recorded("read#3")
        assert read is not None and read.value() == [3]
        assert again.cost_usd() == pytest.approx(640 * 0.5)
    finally:
        await again.close()
        await engine.dispose()


async def test_the_sqlite_writer_opens_the_file_as_the_worker_does(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    engine = create_engine(url)
    await migrate(engine)
    async with engine.connect() as conn:
        worker = [(await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                  for name in ("journal_mode", "synchronous", "busy_timeout")]
    await engine.dispose()
    sync = create_sync_sqlite_engine(url)
    with sync.connect() as conn:
        writer = [conn.execute(text(f"PRAGMA {name}")).scalar()
                  for name in ("journal_mode", "synchronous", "busy_timeout")]
    sync.dispose()
    assert writer == worker
    assert worker[0] == "wal" and worker[1] >= 1  # NORMAL (1) or stronger


CRASHER = textwrap.dedent("""\
    import asyncio, sys
    from core.db import create_engine, migrate
    from workers.journal import Journal, JournalEntry, open_store

    async def main(url):
        engine = create_engine(url)
        await migrate(engine)
        journal = Journal(engine, "run-crash")

        async def writer(k):
            for i in range(k, 10**9, 64):
                entry = JournalEntry(path=f"item#{i}", kind="write", call="mail.send",
                                     request_hash=f"{i:032x}", status="intent")
                await journal.record(entry, durable=True)
                print(f"intent item#{i}", flush=True)
                entry.status, entry.result = "done", {"sent": i}
                await journal.record(entry, durable=True)
                print(f"done item#{i}", flush=True)

        await asyncio.gather(*(writer(k) for k in range(64)))

    asyncio.run(main(sys.argv[1]))
    """)


async def test_a_process_killed_mid_batch_loses_no_acknowledged_write(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, url], stdout=subprocess.PIPE,
                            env=env)
    assert proc.stdout is not None
    acknowledged: dict[str, str] = {}
    while len(acknowledged) < 3000:  # thousands of commits of 64 writers, then a kill mid-way
        line = proc.stdout.readline().decode()
        assert line, f"the writer process ended early (exit {proc.wait()})"
        status, path = line.split()
        acknowledged[path] = status
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    committed = await rows_of(url, "run-crash")
    for path, status in acknowledged.items():
        assert path in committed, f"{path} was acknowledged ({status}) but not committed"
        if status == "done":
            assert committed[path][0] == "done"
            assert json.loads(committed[path][1] or "") == {"sent": int(path[5:])}
    # The database is whole and writable: a resumed journal loads it and commits again.
    engine = create_engine(url)
    journal = Journal(engine, "run-crash")
    try:
        assert await journal.load() == len(committed)
        await journal.record(JournalEntry(path="item#resumed", kind="write", call="mail.send",
                                          request_hash="2" * 32, status="done"), durable=True)
    finally:
        await journal.close()
        await engine.dispose()
    assert (await rows_of(url, "run-crash"))["item#resumed"][0] == "done"


def _runner(tmp_path: Path, journal: Journal) -> EffectRunner:
    settings = load_settings({"SLUICE_HOME": str(tmp_path),
                              "SLUICE_SCRIPTED_MODEL_URL": "http://127.0.0.1:9"}, env_file=False)
    catalog = build_local_catalog(settings, LiteLLMModels.from_settings(settings))
    return EffectRunner(run_id="run-replay", catalog=catalog, journal=journal)


async def _journal_with(db_url: str, call: EffectCall, fingerprint: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-replay")
    try:
        await journal.record(JournalEntry(path=call.path, kind="write", call="Sheet.update",
                                          request_hash=fingerprint, status="done", result=ROW),
                             durable=True)
    finally:
        await journal.close()
        await engine.dispose()


async def _resumed(db_url: str, tmp_path: Path) -> tuple[Any, EffectRunner, Journal]:
    engine = create_engine(db_url)
    journal = Journal(engine, "run-replay")
    await journal.load()
    return engine, _runner(tmp_path, journal), journal


async def test_a_replayed_call_returns_its_record_and_a_different_one_stops_the_run(
        db_url: str, tmp_path: Path) -> None:
    recorded = update_call("each#1/item#7/call#2")
    await _journal_with(db_url, recorded, request_hash(recorded))
    engine, runner, journal = await _resumed(db_url, tmp_path)
    try:
        assert await runner.perform(recorded) == ROW  # no sheet exists: it did not call out
        assert runner.counts.replayed == 1 and runner.counts.live == 0

        different = update_call("each#1/item#7/call#2", asked="no")
        with pytest.raises(RunStopped, match="not deterministic"):
            await runner.perform(different)
        assert runner.stop is not None
        assert runner.stop.reason == StopReason.NON_DETERMINISTIC
        assert runner.stop.path == "each#1/item#7/call#2"
    finally:
        await journal.close()
        await engine.dispose()


async def test_a_recorded_failure_replays_as_the_same_failure(db_url: str,
                                                             tmp_path: Path) -> None:
    recorded = update_call("each#1/item#9/call#2")
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-replay")
    await journal.record(JournalEntry(path=recorded.path, kind="write", call="Sheet.update",
                                      request_hash=request_hash(recorded), status="failed",
                                      error="The sheet has no row r7."), durable=True)
    await journal.close()
    await engine.dispose()
    engine, runner, journal = await _resumed(db_url, tmp_path)
    try:
        with pytest.raises(IntegrationError, match="no row r7"):
            await runner.perform(recorded)
        assert runner.counts.replayed == 1 and runner.counts.live == 0
    finally:
        await journal.close()
        await engine.dispose()


@pytest.mark.parametrize("older", [legacy_request_hash, marshal_request_hash])
@pytest.mark.parametrize("extra", [{}, {"note": None}])  # calls holding None had marshal's
async def test_a_journal_fingerprinted_by_older_code_still_replays(
        db_url: str, tmp_path: Path, older: Any, extra: dict[str, Any]) -> None:
    recorded = update_call("each#1/item#8/call#2", **extra)
    assert older(recorded) != request_hash(recorded)
    await _journal_with(db_url, recorded, older(recorded))
    engine, runner, journal = await _resumed(db_url, tmp_path)
    try:
        assert await runner.perform(recorded) == ROW
        with pytest.raises(RunStopped, match="not deterministic"):
            await runner.perform(update_call("each#1/item#8/call#2", asked="no"))
    finally:
        await journal.close()
        await engine.dispose()


FINGERPRINT = textwrap.dedent("""\
    import json, sys
    from integrations.base import EffectCall
    from workers.effects import request_hash
    fields = json.loads(sys.argv[1])
    fields["handle"] = tuple(fields["handle"])
    print(request_hash(EffectCall(**fields)))
    """)


@pytest.mark.parametrize(("seed", "flags"), [("0", [True, None, False]), ("12345", [True, False])])
def test_the_fingerprint_is_the_same_in_another_process(seed: str, flags: list[Any]) -> None:
    extra = {"note": "ünïcode ✓", "n": 2**40, "x": 1.5, "flags": flags}
    call = update_call("each#1/item#9/call#2", **extra)
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).parent.parent)}
    payload = json.dumps({"integration": call.integration, "action": call.action,
                          "args": call.args, "kwargs": call.kwargs, "handle": call.handle,
                          "path": call.path})
    out = subprocess.run([sys.executable, "-c", FINGERPRINT, payload], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == request_hash(call)
    assert request_hash(update_call("each#1/item#9/call#2", **{**extra, "n": 2**40 + 1})) != out
    assert request_hash(update_call("each#1/item#9/call#2", **{**extra, "x": 1})) != out


# Values JSON alone would confuse (NaN and Infinity are written as null by orjson; 1 and True,
# 1 and 1.0, "1" and 1 must stay apart too).
CONFUSABLE: list[Any] = [1, 1.0, True, None, float("nan"), float("inf"), -0.0, 0.0, 2**70, "1",
                         [1], {"1": 1}]


@pytest.mark.parametrize("index", range(len(CONFUSABLE)))
def test_the_fingerprint_tells_apart_values_json_would_confuse(index: int) -> None:
    mine = request_hash(update_call("p", note=CONFUSABLE[index]))
    assert mine == request_hash(update_call("p", note=CONFUSABLE[index]))
    for other, value in enumerate(CONFUSABLE):
        if other != index:
            assert request_hash(update_call("p", note=value)) != mine, (CONFUSABLE[index], value)


def test_orjson_writes_what_holds_none_and_the_standard_library_what_holds_nan() -> None:
    # orjson's text ends with a newline and is read back by orjson (a fifth of the time); it
    # writes NaN and Infinity as null, like None, so only a null that was None is its.
    assert dump_result({"Budget": None, "Name": "Ana"}) == '{"Budget":null,"Name":"Ana"}\n'
    assert dump_result([None, float("nan")]) == "[null,NaN]"
    assert dump_result({"n": float("inf")}) == '{"n":Infinity}'


async def test_results_reload_exactly_whichever_json_writer_wrote_them(db_url: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    results: list[Any] = [ROW, "ünïcode ✓\u2028", [1, 2.5, -0.0, 2**64 - 1], {"n": 2**70},
                          [float("nan"), float("inf")], {"empty": None}, 0.1 + 0.2, True]
    journal = Journal(engine, "run-json")
    try:
        for i, result in enumerate(results):
            await journal.record(JournalEntry(path=f"call#{i}", kind="read", call="x.y",
                                              request_hash="0" * 32, status="done",
                                              result=result), durable=False)
    finally:
        await journal.close()
    again = Journal(engine, "run-json")
    try:
        await again.load()
        for i, result in enumerate(results):
            entry = again.recorded(f"call#{i}")
            assert entry is not None
            assert repr(entry.value()) == repr(result)  # nan == nan is False; reprs compare
    finally:
        await again.close()
        await engine.dispose()


def _view(journal: Journal, paths: list[str]) -> list[tuple[Any, ...]]:
    view = []
    for path in paths:
        entry = journal.recorded(path)
        assert entry is not None, path
        view.append((entry.kind, entry.call, entry.request_hash, entry.status, entry.value(),
                     entry.error, entry.cost_usd))
    return view


async def test_committed_entries_read_the_same_before_and_after_a_reload(db_url: str) -> None:
    engine = create_engine(db_url)
    await migrate(engine)
    journal = Journal(engine, "run-same")
    recorded = [
        JournalEntry(path="call#1", kind="write", call="mail.send", request_hash="1" * 32,
                     status="intent"),
        JournalEntry(path="call#2", kind="read", call="ai.extract", request_hash="2" * 32,
                     status="done", result=ROW, cost_usd=0.25),
        JournalEntry(path="call#3", kind="write", call="Sheet.update", request_hash="3" * 32,
                     status="failed", error="The sheet has no row r7."),
    ]
    paths = [entry.path for entry in recorded]
    try:
        for entry in recorded:
            await journal.record(entry, durable=True)
        in_process = _view(journal, paths)
        assert journal.cost_usd() == pytest.approx(0.25)
        recorded[0].status, recorded[0].result = "done", "<m1@x>"  # the write's done, later
        await journal.record(recorded[0], durable=True)
        in_process[0] = _view(journal, paths[:1])[0]
        assert in_process[0][3:5] == ("done", "<m1@x>")
    finally:
        await journal.close()
    again = Journal(engine, "run-same")
    try:
        await again.load()
        assert _view(again, paths) == in_process
        assert again.cost_usd() == pytest.approx(0.25)
    finally:
        await again.close()
        await engine.dispose()


async def test_results_written_before_orjson_still_replay_exactly(db_url: str,
                                                                  tmp_path: Path) -> None:
    recorded = update_call("each#1/item#5/call#2")
    result = {"__row__": ["r7", {"Name": "Ana", "Big": 2**70, "Ratio": float("nan")}]}
    engine = create_engine(db_url)
    await migrate(engine)
    async with engine.begin() as conn:  # the row as the standard library's encoder wrote it
        await conn.execute(JournalRow.__table__.insert().values(
            run_id="run-replay", path=recorded.path, kind="write", call="Sheet.update",
            request_hash=marshal_request_hash(recorded), status="done",
            result=json.dumps(result, separators=(",", ":")), error=None, cost_usd=0.0, seq=1))
    await engine.dispose()
    engine, runner, journal = await _resumed(db_url, tmp_path)
    try:
        assert repr(await runner.perform(recorded)) == repr(result)  # 2**70 stays an int
        assert runner.counts.replayed == 1 and runner.counts.live == 0
    finally:
        await journal.close()
        await engine.dispose()


@pytest.mark.parametrize("mode", ["normal", "full"])
async def test_the_journal_writes_with_the_engines_synchronous_mode(tmp_path: Path,
                                                                    mode: str) -> None:
    # SQLite's codes: NORMAL is 1, FULL is 2. The journal's writer opens its own connection.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}",
                           sqlite_synchronous=mode)  # type: ignore[arg-type]
    await migrate(engine)
    code = {"normal": 1, "full": 2}[mode]
    async with engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == code
    store = open_store(engine)
    await store.commit([])
    writer = store._connection()  # type: ignore[attr-defined]
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == code
    await store.close()
    await engine.dispose()
