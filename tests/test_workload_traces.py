"""Trace loaders: small temp files, compressed files, and the public traces shipped in the package."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.workload import WorkloadError, WorkloadSpec, load_workload
from llmsched.workload.traces import builtin_names, detect_format, load_traces
from llmsched.workload.traces.files import BUILTIN_TRACES, data_dir, open_text, resolve_path

# The public traces ship in the package, so the tests on them run on any clone (no ../shared needed).
AZURE_CONV, AZURE_CODE, MOONCAKE = "builtin:azure-conv", "builtin:azure-code", "builtin:mooncake-conv"

AZURE_TEXT = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 18:15:51.1000000,10,1"  # no trailing newline, as in the real files
)
BURST_HEADER = (
    "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def trace(path: Path | str, **kw: object) -> list:
    return load_workload(WorkloadSpec(kind="trace", path=str(path), **kw))


def mooncake_line(t: int, n_in: int, n_out: int, ids: list[int]) -> str:
    return json.dumps({"timestamp": t, "input_length": n_in, "output_length": n_out, "hash_ids": ids})


# --- Azure -----------------------------------------------------------------------------------------------


def test_azure_small_file(tmp_path: Path) -> None:
    p = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_TEXT)
    reqs = trace(p)
    assert [r.rid for r in reqs] == [0, 1, 2]
    assert reqs[0].arrival == 0.0
    assert reqs[1].arrival == pytest.approx(4.314579, abs=1e-6)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(374, 44), (396, 109), (10, 1)]
    assert {r.cls for r in reqs} == {"conv"}
    assert all(r.block_hashes is None for r in reqs)


def test_azure_unsorted_rows_are_sorted(tmp_path: Path) -> None:
    lines = AZURE_TEXT.split("\n")
    p = write(tmp_path, "a.csv", "\n".join([lines[0], lines[3], lines[1], lines[2]]) + "\n")
    reqs = trace(p)
    assert [r.prompt_len for r in reqs] == [374, 396, 10]
    assert reqs[0].arrival == 0.0


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ("2023-11-16 18:15:52.0,12", "expected 3 comma-separated fields"),
        ("2023-11-16 18:15:52.0,12,x", "GeneratedTokens is not an integer"),
        ("2023-11-16 18:15:52.0,0,5", "ContextTokens must be >= 1"),
        ("yesterday,12,5", "bad TIMESTAMP"),
        ("2023-11-16 18:15:52.0,12,5,7", "expected 3 comma-separated fields"),
    ],
)
def test_azure_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, needle: str) -> None:
    lines = AZURE_TEXT.split("\n")
    p = write(tmp_path, "bad.csv", "\n".join([*lines[:2], bad_line, *lines[2:]]))
    with pytest.raises(WorkloadError) as e:
        trace(p, name="azure")
    assert f"{p}:3:" in str(e.value)
    assert needle in str(e.value)


def test_azure_short_and_long_lines_do_not_cancel_out(tmp_path: Path) -> None:
    lines = AZURE_TEXT.split("\n")
    bad = [lines[0], "2023-11-16 18:15:52.0,12", "2023-11-16 18:15:53.0,12,5,7", lines[1]]
    p = write(tmp_path, "bad.csv", "\n".join(bad))
    with pytest.raises(WorkloadError, match=r"bad\.csv:2: expected 3 comma-separated fields, got 2"):
        trace(p)


def test_azure_bad_header(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.csv", "time,ctx,gen\n2023-11-16 18:15:52.0,12,5")
    with pytest.raises(WorkloadError, match=r"bad\.csv:1: expected header"):
        trace(p, name="azure")
    with pytest.raises(WorkloadError, match=r"bad\.csv:1: cannot tell the trace format"):
        trace(p)


# --- Mooncake --------------------------------------------------------------------------------------------


def test_mooncake_small_file(tmp_path: Path) -> None:
    text = "\n".join(
        [
            mooncake_line(0, 1100, 10, [0, 1, 2]),
            mooncake_line(1500, 1024, 5, [0, 1]),
            mooncake_line(500, 600, 7, [9, 10]),
        ]
    )
    reqs = trace(write(tmp_path, "t.jsonl", text))
    assert [r.arrival for r in reqs] == [0.0, 0.5, 1.5]
    a, c, b = reqs  # sorted by time: the 500 ms request is second
    assert (a.prompt_len, b.prompt_len, c.prompt_len) == (1100, 1024, 600)
    assert a.block_hashes is not None and b.block_hashes is not None
    assert len(a.block_hashes) == 1100 // 16 and len(b.block_hashes) == 1024 // 16
    assert a.block_hashes[:64] == b.block_hashes  # ids 0, 1 shared -> 64 sub-blocks shared
    assert c.block_hashes is None  # its first id is used by no other request
    assert {r.cls for r in reqs} == {"t"}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"timestamp": 1, "input_length": 10}', "missing field(s) output_length"),
        ('{"timestamp": -1, "input_length": 10, "output_length": 1}', "timestamp must be"),
        ('{"timestamp": 1, "input_length": 0, "output_length": 1}', "input_length must be an integer >= 1"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 2.5}', "output_length must be"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": [1, 2]}', "2 hash_ids"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": ["a"]}', "list of integers"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_mooncake_malformed_line_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    good = mooncake_line(0, 100, 1, [0])
    p = write(tmp_path, "m.jsonl", "\n".join([good, good, line, good]) + "\n")
    with pytest.raises(WorkloadError) as e:
        trace(p)
    assert f"{p}:3:" in str(e.value)
    assert needle in str(e.value)


# --- BurstGPT --------------------------------------------------------------------------------------------


def test_burstgpt_small_file(tmp_path: Path) -> None:
    text = BURST_HEADER + "\n".join(
        [
            "5,s1,0.5,ChatGPT,100,20,120,Conversation log",
            "7,s1,0.6,ChatGPT,150,0,150,Conversation log",  # failed: dropped
            "9,,0.2,GPT-4,300,40,340,API log",
            "11,s2,0.1,ChatGPT,80,10,90,Conversation log",
        ]
    )
    p = write(tmp_path, "burst.csv", text)
    assert detect_format(p) == "burstgpt"
    cols = load_traces(str(p))
    assert cols.notes["dropped_failed"] == 1
    reqs = trace(p)
    assert [r.arrival for r in reqs] == [0.0, 4.0, 6.0]
    assert [r.cls for r in reqs] == ["conversation", "api", "conversation"]
    assert [r.session for r in reqs] == ["s1", None, "s2"]
    assert [r.prompt_len for r in reqs] == [100, 300, 80]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("x,s1,0.5,ChatGPT,100,20,120,Conversation log", "Timestamp is not a number"),
        ("5,s1,0.5,ChatGPT,abc,20,120,Conversation log", "Request tokens is not an integer"),
        ("5,s1,0.5,ChatGPT,100,-3,97,Conversation log", "Response tokens must be >= 0"),
        ("5,s1,0.5,ChatGPT,100", "expected 8 fields, got 5"),
    ],
)
def test_burstgpt_malformed_line(tmp_path: Path, line: str, needle: str) -> None:
    good = "1,s1,0.5,ChatGPT,100,20,120,Conversation log"
    p = write(tmp_path, "b.csv", BURST_HEADER + "\n".join([good, line, good]))
    with pytest.raises(WorkloadError) as e:
        trace(p, name="burstgpt")
    assert f"{p}:3:" in str(e.value)
    assert needle in str(e.value)


def test_burstgpt_header_without_sessions(tmp_path: Path) -> None:
    text = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,ChatGPT,10,5,15,API log\n"
    reqs = trace(write(tmp_path, "old.csv", text))
    assert len(reqs) == 1 and reqs[0].session is None and reqs[0].cls == "api"


# --- mixing, builtin, errors -----------------------------------------------------------------------------


def test_mix_two_files_labels_each_source(tmp_path: Path) -> None:
    a = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_TEXT)
    b = write(tmp_path, "AzureLLMInferenceTrace_code.csv", AZURE_TEXT.replace(",374,44", ",999,3"))
    reqs = trace(f"{a},{b}")
    assert len(reqs) == 6
    assert sorted(r.cls for r in reqs) == ["code"] * 3 + ["conv"] * 3
    assert [r.arrival for r in reqs[:2]] == [0.0, 0.0]  # each source starts at 0
    assert np.all(np.diff([r.arrival for r in reqs]) >= 0)
    renamed = trace(f"{a},{b}", params={"classes": ["x", "y"]})
    assert {r.cls for r in renamed} == {"x", "y"}
    with pytest.raises(WorkloadError, match="1 labels for 2 trace files"):
        trace(f"{a},{b}", params={"classes": ["x"]})


def test_mix_keeps_block_ids_of_sources_apart(tmp_path: Path) -> None:
    line = mooncake_line(0, 1024, 1, [0, 1]) + "\n" + mooncake_line(10, 1024, 1, [0, 2])
    a, b = write(tmp_path, "a.jsonl", line), write(tmp_path, "b.jsonl", line)
    reqs = trace(f"{a},{b}")
    by_cls = {c: [r for r in reqs if r.cls == c] for c in ("a", "b")}
    assert by_cls["a"][0].block_hashes[:32] == by_cls["a"][1].block_hashes[:32]
    assert not set(by_cls["a"][0].block_hashes) & set(by_cls["b"][0].block_hashes)


def test_builtin_sample() -> None:
    reqs = trace("builtin:sample")
    assert 300 <= len(reqs) <= 2000
    assert {r.cls for r in reqs} == {"session", "api", "agent"}
    assert all(r.session for r in reqs)
    shared = sum(r.block_hashes is not None for r in reqs)
    assert shared > len(reqs) // 2
    with pytest.raises(WorkloadError, match="unknown built-in trace"):
        trace("builtin:nope")


def test_sample_file_matches_its_script() -> None:
    from importlib import resources

    from llmsched.workload.sample import sample_rows, sample_text

    shipped = resources.files("llmsched").joinpath("data/traces/sample.jsonl").read_text(encoding="utf-8")
    assert shipped == sample_text(sample_rows()), "regenerate: python scripts/make_sample_trace.py"


def test_missing_file_and_bad_format(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="trace file not found"):
        trace(tmp_path / "nope.csv")
    with pytest.raises(WorkloadError, match="unknown trace format"):
        trace(write(tmp_path, "a.csv", AZURE_TEXT), name="parquet")
    with pytest.raises(WorkloadError, match="needs path"):
        load_workload(WorkloadSpec(kind="trace"))


# --- the real traces -------------------------------------------------------------------------------------




@pytest.mark.parametrize(("path", "rows", "label"), [(AZURE_CONV, 19366, "conv"), (AZURE_CODE, 8819, "code")])
def test_real_azure(path: str, rows: int, label: str) -> None:
    reqs = trace(path)
    assert len(reqs) == rows
    assert reqs[0].arrival == 0.0 and 3000 < reqs[-1].arrival < 3600
    assert {r.cls for r in reqs} == {label}
    assert min(r.output_len for r in reqs) >= 1


def test_real_azure_mix() -> None:
    reqs = trace(f"{AZURE_CONV},{AZURE_CODE}")
    assert len(reqs) == 19366 + 8819
    counts = {c: sum(r.cls == c for r in reqs) for c in ("conv", "code")}
    assert counts == {"conv": 19366, "code": 8819}


def test_real_mooncake() -> None:
    reqs = trace(MOONCAKE, limit=1500)  # hashes are expanded for kept rows only
    assert len(reqs) == 1500
    assert all(r.block_hashes is None or len(r.block_hashes) == r.prompt_len // 16 for r in reqs)
    seen: set[int] = set()
    refs = hits = 0
    for r in reqs:
        for h in r.block_hashes or ():
            refs += 1
            hits += h in seen
            seen.add(h)
    assert 0.2 < hits / refs < 0.8  # the trace reuses a sizeable share of its blocks


def test_real_mooncake_row_count() -> None:
    with open_text(resolve_path(MOONCAKE)) as f:
        assert sum(1 for line in f if line.strip()) == 12031
    cols = load_traces(MOONCAKE, block_size=512)  # cheap block size: all rows, one hash per block
    assert len(cols) == 12031


# --- round-trip properties -------------------------------------------------------------------------------

rows_strategy = st.lists(
    st.tuples(st.integers(0, 10**7), st.integers(1, 20000), st.integers(1, 4000)), min_size=1, max_size=40
)


@settings(max_examples=30, deadline=None)
@given(rows=rows_strategy)
def test_azure_round_trip(rows: list[tuple[int, int, int]]) -> None:
    base = np.datetime64("2023-11-16T18:00:00", "ns")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t_ms, n_in, n_out in rows:
        ts = str(base + np.timedelta64(t_ms * 100_000, "ns")).replace("T", " ")[:27]
        lines.append(f"{ts},{n_in},{n_out}")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.csv"
        p.write_text("\n".join(lines), encoding="utf-8")
        reqs = trace(p)
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # stable, as the loader
    t0 = rows[order[0]][0]
    assert [(r.prompt_len, r.output_len) for r in reqs] == [rows[i][1:] for i in order]
    assert [r.arrival for r in reqs] == pytest.approx([(rows[i][0] - t0) * 1e-4 for i in order], abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(rows=rows_strategy, bs=st.sampled_from([16, 32, 100]))
def test_mooncake_round_trip(rows: list[tuple[int, int, int]], bs: int) -> None:
    lines = [mooncake_line(t, n_in, n_out, list(range(-(-n_in // 512)))) for t, n_in, n_out in rows]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.jsonl"
        p.write_text("\n".join(lines), encoding="utf-8")
        reqs = load_workload(WorkloadSpec(kind="trace", path=str(p)), block_size=bs)
    assert all(a.arrival <= b.arrival for a, b in zip(reqs, reqs[1:], strict=False))
    assert sorted((r.prompt_len, r.output_len) for r in reqs) == sorted((n, o) for _, n, o in rows)
    shared = len(rows) > 1  # every row starts with block id 0
    for r in reqs:
        if shared and r.prompt_len >= bs:
            assert r.block_hashes is not None and len(r.block_hashes) == r.prompt_len // bs
        else:
            assert r.block_hashes is None


# --- packaged and compressed traces ----------------------------------------------------------------------


def test_every_builtin_trace_is_packaged_with_its_licence() -> None:
    assert builtin_names() == ["azure-code", "azure-conv", "mooncake-conv", "sample"]
    for t in BUILTIN_TRACES.values():
        assert (data_dir() / t.file).is_file(), t.file
    attribution = (data_dir() / "ATTRIBUTION.md").read_text()
    for lic in ("LICENSE-azure-2023-CC-BY-4.0.txt", "LICENSE-mooncake-Apache-2.0.txt"):
        assert (data_dir() / lic).is_file() and lic in attribution


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_compressed_files_read_like_plain_ones(tmp_path: Path, suffix: str) -> None:
    import gzip
    import lzma

    plain = write(tmp_path, "a.csv", AZURE_TEXT)
    packed = tmp_path / f"a.csv{suffix}"
    packed.write_bytes((gzip.compress if suffix == ".gz" else lzma.compress)(AZURE_TEXT.encode()))
    assert detect_format(packed) == "azure"
    a, b = trace(plain), trace(str(packed))
    assert [(r.arrival, r.prompt_len, r.output_len) for r in a] == [(r.arrival, r.prompt_len, r.output_len) for r in b]


def test_unusable_trace_paths_say_why(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="is a directory"):
        trace(str(tmp_path))
    with pytest.raises(WorkloadError, match="the trace file is empty"):
        trace(write(tmp_path, "empty.csv", ""))
    with pytest.raises(WorkloadError, match="the workload is empty"):
        trace(write(tmp_path, "head.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"))
    with pytest.raises(WorkloadError, match="did you mean builtin:sample"):
        trace("builtin:sampel")
