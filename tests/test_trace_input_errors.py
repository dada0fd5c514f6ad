"""Bad or damaged trace input (second review, 2026-11-30): each case failed before its fix. A recording cut
short by a crash keeps its complete rows, a pruned older segment drops nothing after it, a rotated segment is
readable at once; bad rows, bad headers, huge counts, undecodable bytes and corrupt archives get a
`WorkloadError` naming the file (and line), not a traceback; a UTF-8 byte-order mark is accepted."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmsched.core.types import Request
from llmsched.gateway.record import Recorder
from llmsched.workload.errors import WorkloadError
from llmsched.workload.load import load_workload
from llmsched.workload.spec import WorkloadSpec
from llmsched.workload.traces.record import read_recording

AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BG_HEAD = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


class _Out:
    status = 200
    backend = 0
    ttft = 0.01
    e2e = 0.1
    tokens = 5
    model = None


def _load(p: Path, fmt: str = "auto") -> list[Request]:
    return load_workload(WorkloadSpec(kind="trace", name=fmt, path=str(p)))


def _recording(path: Path, n: int = 5) -> list[str]:
    rec = Recorder(path, 16, flush_interval=0.01)
    for i in range(n):
        rec.record(Request(rid=i, arrival=float(i), prompt_len=40, output_len=5), _Out(), None,  # type: ignore[arg-type]
                   text="hello world " * 10)
    rec.close()
    return path.read_text().splitlines()


# -- recordings: crashes lose nothing ----------------------------------------------------------------------
def test_truncated_last_line_keeps_the_complete_rows(tmp_path: Path) -> None:
    """A gateway killed mid-write leaves a partial last line: the complete rows still replay and calibrate."""
    lines = _recording(tmp_path / "r.jsonl")
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # no newline, cut mid-object
    assert len(_load(crashed)) == 4
    rec = read_recording(crashed)
    assert len(rec) == 4 and rec.truncated == 1
    # Cut in the middle of the file (not a crash's signature) stays an error naming the line.
    middle = tmp_path / "middle.jsonl"
    middle.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")
    with pytest.raises(WorkloadError, match=r"middle\.jsonl:3: not valid JSON"):
        _load(middle)


def test_recording_is_readable_right_after_rotation(tmp_path: Path) -> None:
    """After a rotation the new PATH's header was left in the writer's buffer until the next row: a reader (or
    a gateway killed then) saw an empty PATH and lost every rotated segment."""
    rec = Recorder(tmp_path / "r.jsonl", 16, max_bytes=300, flush_interval=0.01)
    try:
        for i in range(3):
            rec.record(Request(rid=i, arrival=float(i), prompt_len=40, output_len=5), _Out(), None,  # type: ignore[arg-type]
                       text="hello world " * 10)
        deadline = time.monotonic() + 5
        while not (tmp_path / "r.jsonl.1").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert (tmp_path / "r.jsonl").stat().st_size > 0, "header of the new segment not on disk"
        assert len(_load(tmp_path / "r.jsonl")) == 3
    finally:
        rec.close()


def _segment(path: Path, rid: str, rows: list[int]) -> None:
    head = {"llmsched_record": 1, "recording": rid, "segment": 0, "block_size": 16, "time_scale": 1.0,
            "backends": []}
    body = [json.dumps({"arrival": float(i), "prompt_tokens": 40, "output_tokens": 5, "max_tokens": 5,
                        "status": 200, "e2e": 0.1, "ttft": 0.01, "backend": 0}) for i in rows]
    path.write_text("\n".join([json.dumps(head), *body]) + "\n")


def test_a_pruned_older_segment_drops_nothing_after_it(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    _segment(Path(f"{p}.2"), "abc", [2, 3])
    _segment(Path(f"{p}.10"), "abc", [4, 5])  # numbers, not names, give the order (.10 after .2)
    _segment(p, "abc", [6])  # PATH.1 was pruned, as one prunes rotated logs
    reqs = _load(p)
    assert [r.arrival for r in reqs] == [0.0, 1.0, 2.0, 3.0, 4.0]  # every segment, in order (times from the first)


def test_rotation_after_a_pruned_segment_numbers_past_the_highest(tmp_path: Path) -> None:
    """With PATH.1 pruned and PATH.2 kept, the next rotation must write PATH.3 (not PATH.1: the newest rows would
    then be read first)."""
    p = tmp_path / "r.jsonl"
    _segment(Path(f"{p}.2"), "old", [0])
    _segment(p, "old", [1])
    rec = Recorder(p, 16, flush_interval=0.01)  # a new recording: the old PATH is rotated aside
    rec.close()
    assert Path(f"{p}.3").exists() and not Path(f"{p}.1").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("block_hashes", "!!!notbase64"), ("block_hashes", "AAAA"), ("prompt_tokens", 10**30), ("status", 10**30),
    ("arrival", float("nan")), ("ttft", float("inf")),
])
def test_a_bad_recording_row_names_file_and_line(tmp_path: Path, field: str, value: object) -> None:
    lines = _recording(tmp_path / "r.jsonl", 3)
    row = json.loads(lines[2])
    row[field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(row), lines[3]]) + "\n")
    with pytest.raises(WorkloadError, match=rf"bad\.jsonl:3: {field}"):
        _load(bad)


@pytest.mark.parametrize(("key", "value"), [("block_size", 0), ("block_size", "x"), ("time_scale", None),
                                            ("time_scale", "fast"), ("time_scale", -2.0)])
def test_a_bad_recording_header_names_file_and_key(tmp_path: Path, key: str, value: object) -> None:
    lines = _recording(tmp_path / "r.jsonl", 2)
    head = {**json.loads(lines[0]), key: value}
    bad = tmp_path / "badhead.jsonl"
    bad.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    with pytest.raises(WorkloadError, match=rf"badhead\.jsonl:1: {key}"):
        _load(bad)


# -- trace files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text"), [
    ("az.csv", AZ_HEAD + "2023-11-16 18:15:46.6805900,99999999999999999999,5\n"),
    ("bg.csv", BG_HEAD + "5,x,1e30,5,6,API log\n"),
    ("mc.jsonl", '{"timestamp": 0, "input_length": 100000000000000000000000, "output_length": 5}\n'),
])
def test_a_huge_token_count_names_file_and_line(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(WorkloadError, match=rf"{name}:[12]: "):  # was an OverflowError (a traceback in the CLI)
        _load(p)


def test_a_non_utf8_trace_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes((AZ_HEAD + "2023-11-16 18:15:46.6805900,10,5\n").encode() + b"2023-11-16 18:15:47.0,\xff1,5\n")
    with pytest.raises(WorkloadError, match=r"latin\.csv:3: not UTF-8"):
        _load(p)


def test_a_corrupt_gzip_trace_names_the_file(tmp_path: Path) -> None:
    good = gzip.compress((AZ_HEAD + "2023-11-16 18:15:46.6805900,10,5\n" * 50).encode())
    p = tmp_path / "t.csv.gz"
    p.write_bytes(good[:12] + b"\xff" * 10 + good[22:])
    with pytest.raises(WorkloadError, match=r"t\.csv\.gz"):  # zlib.error escaped
        _load(p, "azure")


@pytest.mark.parametrize(("name", "text"), [
    ("bom.csv", AZ_HEAD + "2023-11-16 18:15:46.6805900,10,5\r\n2023-11-16 18:15:47.0,11,6\r\n"),
    ("bom.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
                  '{"timestamp": 5, "input_length": 11, "output_length": 6}\n'),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())  # what Excel and PowerShell write
    assert len(_load(p)) == 2


def test_the_cli_names_the_line_of_a_huge_count_without_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "az.csv"
    p.write_text(AZ_HEAD + "2023-11-16 18:15:46.6805900,99999999999999999999,5\n")
    r = subprocess.run([sys.executable, "-m", "llmsched.cli", "simulate", "--trace", str(p), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-300:]
    assert "az.csv:2" in r.stderr
