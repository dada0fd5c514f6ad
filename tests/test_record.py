"""The gateway recorder (`serve --record`), the recording trace format and its loader."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import numpy as np
import pytest

from llmsched.core.types import Request
from llmsched.gateway.config import build_config
from llmsched.gateway.record import Recorder
from llmsched.gateway.server import Gateway, Outcome
from llmsched.gateway.testing import FakeBackend
from llmsched.workload import load_workload
from llmsched.workload.errors import WorkloadError
from llmsched.workload.spec import WorkloadSpec
from llmsched.workload.traces import detect_format
from llmsched.workload.traces.record import decode_hashes, read_recording

T = TypeVar("T")


def _req(rid: int, t: float, hashes: tuple[int, ...] | None = (1, 2, 3), session: str | None = "alice",
         priority: int = 0) -> Request:
    return Request(rid, t, 48, 10, hashes, session=session, priority=priority)


def _out(rid: int, ttft: float | None = 0.05, status: int = 200) -> Outcome:
    """The gateway's outcome of request `rid`: backend rid % 2, 10 tokens, E2E 0.5 s."""
    out = Outcome("/v1/completions", 0.0)
    out.status, out.backend, out.ttft, out.e2e, out.tokens = status, rid % 2, ttft, 0.5, 10
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_recorder_writes_header_and_one_line_per_request(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.jsonl", 16, backends=["http://a", "http://b"], t0=10.0)
    rec.record(_req(0, 10.5, priority=3), _out(0), "chat")
    rec.record(_req(1, 11.0), _out(1, ttft=None), None)
    rec.close()
    head, a, b = _lines(tmp_path / "r.jsonl")
    assert head["llmsched_record"] == 1 and head["block_size"] == 16 and head["backends"] == ["http://a", "http://b"]
    assert a["arrival"] == pytest.approx(0.5) and a["prompt_tokens"] == 48 and a["output_tokens"] == 10
    assert a["ttft"] == pytest.approx(0.05) and a["e2e"] == pytest.approx(0.5)
    assert a["class"] == "chat" and a["priority"] == 3 and a["backend"] == 0 and a["status"] == 200
    assert b["ttft"] is None  # a whole (not streamed) answer: the gateway did not see the first token
    assert rec.written == 2 and rec.dropped == 0


def test_hashes_are_salted_per_recording_and_keep_prefix_identity(tmp_path: Path) -> None:
    out = []
    for name in ("x", "y"):
        rec = Recorder(tmp_path / f"{name}.jsonl", 16)
        rec.record(_req(0, 0.0, (11, 22, 33)), _out(0), None)
        rec.record(_req(1, 0.1, (11, 22, 44)), _out(1), None)
        rec.close()
        rows = _lines(tmp_path / f"{name}.jsonl")[1:]
        out.append([decode_hashes(r["block_hashes"]) for r in rows] + [[r["session"] for r in rows]])
    (x1, x2, xs), (y1, y2, ys) = out
    assert x1[:2] == x2[:2] and x1[2] != x2[2]  # equal prefix, equal hashes; different block, different
    assert set(x1).isdisjoint({11, 22, 33})  # never the gateway's own values
    assert set(x1).isdisjoint(y1)  # two recordings share nothing
    assert xs[0] == xs[1] != "alice" and xs[0] != ys[0]  # session keys hashed, keyed per recording


def _through_gateway(rec: Path, send: Callable[[aiohttp.ClientSession, str], Awaitable[T]]) -> T:
    """`send(session, gateway_url)` against a recording gateway in front of one fake backend."""

    async def main() -> T:
        be = FakeBackend()
        url = await be.start()
        gw = Gateway(build_config({"backends": [url], "record": {"path": str(rec)}}))
        gw_url = await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                return await send(s, gw_url)
        finally:
            await gw.stop()
            await be.stop()

    return asyncio.run(main())


def test_no_prompt_text_reaches_the_file(tmp_path: Path) -> None:
    async def send(s: aiohttp.ClientSession, gw_url: str) -> str:
        body = {"prompt": "the secret passphrase is swordfish " * 20, "max_tokens": 4, "stream": True, "user": "bob"}
        async with s.post(gw_url + "/v1/completions", json=body, headers={"x-llmsched-class": "gold"}) as r:
            assert r.status == 200
            await r.read()
        await asyncio.sleep(0.4)  # the writer thread's flush interval is 0.2 s
        async with s.get(gw_url + "/metrics") as r:
            return await r.text()

    rec = tmp_path / "g.jsonl"
    metrics = _through_gateway(rec, send)
    assert "llmsched_gateway_record_written_total 1.0" in metrics
    assert "llmsched_gateway_record_dropped_total 0.0" in metrics
    text = rec.read_text()
    assert "swordfish" not in text and "bob" not in text
    row = _lines(rec)[1]
    assert row["class"] == "gold" and row["output_tokens"] == 4 and row["backend"] == 0 and row["ttft"] > 0
    assert len(base64.b64decode(row["block_hashes"])) == 8 * (row["prompt_tokens"] // 16)



def test_prompts_the_router_does_not_hash_are_hashed_by_the_writer_as_the_router_would(tmp_path: Path) -> None:
    """Round robin hashes nothing on the data path: the recorder gets the prompt text and its writer hashes a
    batch at a time; the recorded (salted) hashes must be the salted hashes a prefix-aware router computes."""
    from llmsched.gateway.openai_req import token_ids
    from llmsched.gateway.prefix import block_hashes
    from llmsched.gateway.record import salt_hashes

    prompts = ["shared system prompt " * 12 + f"question {k} " * (3 + 4 * k) for k in range(3)]
    rec_path = tmp_path / "rr.jsonl"
    salts: list[int] = []

    async def main() -> None:
        be = FakeBackend()
        url = await be.start()
        gw = Gateway(build_config({"backends": [url], "router": {"name": "round-robin"}, "record": {"path": str(rec_path)}}))
        await gw.start()
        assert not gw.dispatcher.resolve(None).uses_index  # the data path does not hash for round robin
        salts.extend((gw.recorder._k0, gw.recorder._k1))  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as s:
                for p in prompts:
                    async with s.post(gw.url + "/v1/completions", json={"prompt": p, "max_tokens": 2}) as r:
                        assert r.status == 200
                        await r.read()
        finally:
            await gw.stop()
            await be.stop()

    asyncio.run(main())
    rows = _lines(rec_path)[1:]
    assert len(rows) == 3
    for row, p in zip(rows, prompts, strict=True):
        want = salt_hashes(block_hashes(token_ids(p), 16), *salts).tolist()
        assert decode_hashes(row["block_hashes"]) == tuple(want) and len(want) == row["prompt_tokens"] // 16 > 0


def test_rows_with_hashes_and_rows_with_text_keep_their_own_hashes_in_one_batch(tmp_path: Path) -> None:
    from llmsched.gateway.openai_req import token_ids
    from llmsched.gateway.prefix import block_hashes
    from llmsched.gateway.record import salt_hashes

    rec = Recorder(tmp_path / "m.jsonl", 16, flush_interval=60)  # one writer pass, at close
    text = "a prompt long enough for a few blocks " * 8
    rec.record(_req(0, 0.0, (5, 6)), _out(0), None)
    rec.record(_req(1, 0.1, None), _out(1), None, text)
    rec.record(_req(2, 0.2, None), _out(0), None, "short")  # no full block
    rec.record(_req(3, 0.3, (7,)), _out(1), None)
    k0, k1 = rec._k0, rec._k1
    rec.close()
    got = [decode_hashes(r["block_hashes"]) for r in _lines(tmp_path / "m.jsonl")[1:]]
    want = [(5, 6), block_hashes(token_ids(text), 16), (), (7,)]
    assert got == [tuple(salt_hashes(w, k0, k1).tolist()) for w in want] and len(want[1]) > 2

def test_recorded_tokens_and_ttft_come_from_the_gateways_data_path(tmp_path: Path) -> None:
    """Streamed (events counted), non-streamed sent upstream as a stream (usage of the re-assembled answer) and
    non-streamed passed whole (`logprobs`: usage at the answer's tail) each record what the data path counted;
    TTFT only where the gateway saw the first token arrive on its own."""

    async def send(s: aiohttp.ClientSession, gw_url: str) -> None:
        for extra in ({"stream": True}, {}, {"logprobs": 1}):
            body = {"prompt": "hello there", "max_tokens": 5 + len(extra), **extra}
            async with s.post(gw_url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()

    rec = tmp_path / "t.jsonl"
    _through_gateway(rec, send)
    streamed, internal, whole = _lines(rec)[1:]
    assert (streamed["output_tokens"], internal["output_tokens"], whole["output_tokens"]) == (6, 5, 6)
    assert streamed["ttft"] > 0 and internal["ttft"] > 0 and whole["ttft"] is None


def test_recorded_priority_is_the_bodys_and_0_without_one(tmp_path: Path) -> None:
    """The format's `priority`: the body's field, 0 when absent (the recorder reads the request's checked value)."""

    async def send(s: aiohttp.ClientSession, gw_url: str) -> None:
        for extra in ({"priority": -3}, {}, {"priority": 7}):
            async with s.post(gw_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, **extra}) as r:
                assert r.status == 200
                await r.read()

    rec = tmp_path / "p.jsonl"
    _through_gateway(rec, send)
    assert [row["priority"] for row in _lines(rec)[1:]] == [-3, 0, 7]


def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "d.jsonl", 16, buffer=3, flush_interval=3600)
    for i in range(10):
        rec.record(_req(i, i * 0.1), _out(i), None)
    assert rec.dropped == 7
    rec.close()
    assert rec.written == 3 and len(_lines(tmp_path / "d.jsonl")) == 4


def test_rotation_by_size_and_the_loader_reads_every_segment(tmp_path: Path) -> None:
    path = tmp_path / "rot.jsonl"
    rec = Recorder(path, 16, max_bytes=4096, flush_interval=3600)
    for i in range(120):
        rec.record(_req(i, i * 0.1, tuple(range(i % 7 + 1))), _out(i), None)
        if i % 10 == 9:
            rec._drain()  # what the writer thread does every flush_interval
    rec.close()
    assert Path(f"{path}.1").is_file() and Path(f"{path}.2").is_file()
    assert all(json.loads(p.read_text().splitlines()[0])["llmsched_record"] == 1
               for p in [path, *tmp_path.glob("rot.jsonl.*")])
    r = read_recording(path)
    assert len(r) == 120 and np.all(np.diff(r.arrival) > 0)


def test_a_second_recording_to_the_same_path_rotates_the_first_aside(tmp_path: Path) -> None:
    path = tmp_path / "same.jsonl"
    for n in (3, 2):
        rec = Recorder(path, 16)
        for i in range(n):
            rec.record(_req(i, i * 0.1), _out(i), None)
        rec.close()
    assert Path(f"{path}.1").is_file()
    assert len(read_recording(path)) == 2 and len(read_recording(Path(f"{path}.1"))) == 3


def _write_record(path: Path, rows: list[dict], **head: object) -> Path:
    header = {"llmsched_record": 1, "recording": "abc", "block_size": 16, "time_scale": 1.0, **head}
    path.write_text("\n".join(json.dumps(x) for x in [header, *rows]) + "\n")
    return path


def _row(t: float, **kw: object) -> dict:
    h = base64.b64encode(np.arange(1, 5, dtype="<u8").tobytes()).decode()
    return {"arrival": t, "prompt_tokens": 70, "output_tokens": 5, "max_tokens": 9, "block_hashes": h,
            "session": "s1", "class": "c", "priority": 0, "backend": 0, "ttft": 0.1, "e2e": 0.5, "status": 200,
            **kw}


def test_trace_loader_detects_a_recording_and_replays_what_was_answered(tmp_path: Path) -> None:
    p = _write_record(tmp_path / "rec.jsonl", [_row(1.0, priority=-2), _row(2.0, status=429, output_tokens=None,
                                                                           e2e=None),
                                                _row(0.5, output_tokens=None)], time_scale=2.0)
    assert detect_format(p) == "record"
    reqs = load_workload(WorkloadSpec(kind="trace", path=str(p)), block_size=32)
    assert [r.arrival for r in reqs] == [0.0, 1.0]  # sorted, rebased, x time_scale; the 429 is not replayed
    assert [r.output_len for r in reqs] == [9, 5]  # unknown output length -> max_tokens
    assert reqs[0].block_hashes == (2, 4)  # every 2nd 16-token hash at block size 32
    assert reqs[0].cls == "c" and reqs[0].session == "s1"
    assert [r.priority for r in reqs] == [0, -2]


def test_recording_errors_name_file_and_line(tmp_path: Path) -> None:
    p = _write_record(tmp_path / "bad.jsonl", [_row(1.0), _row(2.0, prompt_tokens="x")])
    with pytest.raises(WorkloadError, match=r"bad.jsonl:3: prompt_tokens must be an integer"):
        load_workload(WorkloadSpec(kind="trace", path=str(p)))
    with pytest.raises(WorkloadError, match="block size 16"):
        load_workload(WorkloadSpec(kind="trace", path=str(_write_record(tmp_path / "ok.jsonl", [_row(1.0)]))),
                      block_size=24)


