"""Run vLLM's own tests against llmsched's vLLM classes; fail unless ours pass every test stock vLLM passes.

1. Fetch vLLM's tests from the source distribution of the installed (pinned) vLLM version, with pip, into a
   cache folder (the wheel has no tests); only `tests/` and `pyproject.toml` are unpacked, so the tests import
   the installed vLLM, never the sdist's sources. Nothing of vLLM is copied into this repository.
2. Write the model-config folders the tests name (model_configs.py) into the unpacked root.
3. tests/v1/core/test_scheduler.py three times: on vLLM's stock scheduler, then on `llmsched.vllm.Scheduler`
   configured as fcfs and as priority (llmsched_plugin.py; a test asking vLLM for the other policy is
   skipped in that run and covered by the other). Assert: every test that passes on stock passes on ours.
4. tests/distributed/test_eplb_algo.py on vLLM's default policy, then on each of our EPLB policies where the
   test is about the policy contract (eplb_plugin.py). Assert: every such test that passes on the default
   passes on ours.

Needs: the vllm extra installed (`pip install -e ".[vllm]"`), setuptools-rust and setuptools-scm (pip prepares
the sdist's metadata), tblib (vLLM's tests/conftest.py imports it). Each step prints its wall time.

Usage: python scripts/vllm_tests/run.py [--work DIR] [--cache DIR] [--only scheduler|eplb]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHED_TESTS = "tests/v1/core/test_scheduler.py"
EPLB_TESTS = "tests/distributed/test_eplb_algo.py"
GUARD = "llmsched-run:"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def step(title: str):
    """Prints the step's wall time and its subprocesses' CPU time (comparable across machine loads)."""

    class _Timer:
        def __enter__(self):
            self.t, self.c = time.monotonic(), _cpu()
            print(f"== {title} (load {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)

        def __exit__(self, *exc):
            wall, cpu = time.monotonic() - self.t, _cpu() - self.c
            print(f"== {title}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)

    return _Timer()


def fetch_tests(vllm_version: str, cache: Path, work: Path) -> Path:
    """Unpack tests/ and pyproject.toml of vLLM's sdist into work/vllm-<version>; returns that root."""
    tarball = cache / f"vllm-{vllm_version}.tar.gz"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cuda",
        }  # vLLM's setup.py needs a target to prepare metadata
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"vllm=={vllm_version}",
            "--no-deps",
            "--no-binary",
            "vllm",
            "--no-build-isolation",
            "--quiet",
            "-d",
            str(cache),
        ]
        subprocess.run(cmd, env=env, check=True)
    prefix = f"vllm-{vllm_version}/"
    root = work / prefix.rstrip("/")
    with tarfile.open(tarball) as tf:
        members = [
            m
            for m in tf.getmembers()
            if m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml"
        ]
        tf.extractall(work, members=members, filter="data")
    assert not (root / "vllm").exists(), "the sdist's vllm sources must not shadow the installed package"
    subprocess.run([sys.executable, str(HERE / "model_configs.py"), str(root)], check=True)
    return root


def run_pytest(root: Path, test: str, junit: Path, plugins: list[str], env_extra: dict[str, str]) -> int:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(root)]),
        **env_extra,
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        test,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    for p in plugins:
        cmd += ["-p", p]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    tail = [ln for ln in r.stdout.splitlines() if ln.strip()][-3:]
    for ln in r.stdout.splitlines():
        if ln.startswith("llmsched-eplb["):
            print("   ", ln)
    print("   ", *tail, sep="\n    ")
    if r.returncode not in (0, 1):  # 1 = some tests failed; anything else: pytest itself broke
        print(r.stdout[-4000:], r.stderr[-4000:], sep="\n")
        raise SystemExit(f"pytest exited with {r.returncode} on {test}")
    return r.returncode


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test id -> (passed|failed|skipped, message)."""
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        kind, msg = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                kind, msg = "failed", (child.get("message") or "")[:200]
            elif child.tag == "skipped":
                kind, msg = "skipped", child.get("message") or ""
        out[tid] = (kind, msg)
    return out


def counts(res: dict[str, tuple[str, str]]) -> str:
    kinds = [k for k, _ in res.values()]
    guard = sum(1 for k, m in res.values() if k == "skipped" and GUARD in m)
    s = f"{kinds.count('passed')} passed, {kinds.count('failed')} failed, {kinds.count('skipped') - guard} skipped"
    return s + (f", {guard} left to the other policy's run" if guard else "")


def check(stock: dict, ours: dict[str, dict], what: str) -> list[str]:
    """Tests passing on stock that do not pass on ours (in the run that covers them)."""
    bad = []
    for tid, (kind, _) in stock.items():
        if kind != "passed":
            continue
        runs = {name: res.get(tid, ("missing", "")) for name, res in ours.items()}
        covered = [k for k, m in runs.values() if not (k == "skipped" and GUARD in m)]
        if not covered or any(k != "passed" for k in covered):
            bad.append(f"{what}: {tid}: stock passed, ours {runs}")
    return bad


def scheduler_suite(root: Path, out: Path) -> list[str]:
    res = {}
    for name, env in (
        ("stock", {}),
        ("fcfs", {"LLMSCHED_UNDER_TEST": "fcfs"}),
        ("priority", {"LLMSCHED_UNDER_TEST": "priority"}),
    ):
        with step(
            f"test_scheduler.py on {'vLLM stock Scheduler' if name == 'stock' else 'llmsched ' + name}"
        ):
            junit = out / f"scheduler-{name}.xml"
            run_pytest(root, SCHED_TESTS, junit, ["cpu_plugin", "llmsched_plugin"], env)
            res[name] = outcomes(junit)
            print(f"    {name}: {counts(res[name])}")
    stock = res.pop("stock")
    return check(stock, res, "test_scheduler.py")


def eplb_suite(root: Path, out: Path) -> list[str]:
    from llmsched.vllm.eplb import POLICIES

    bad: list[str] = []
    with step("test_eplb_algo.py on vLLM's default EPLB policy"):
        junit = out / "eplb-default.xml"
        run_pytest(root, EPLB_TESTS, junit, ["cpu_plugin"], {})
        stock = outcomes(junit)
        print(f"    default: {counts(stock)}")
    for name in POLICIES:
        with step(f"test_eplb_algo.py on llmsched {name}"):
            junit = out / f"eplb-{name}.xml"
            run_pytest(
                root, EPLB_TESTS, junit, ["cpu_plugin", "eplb_plugin"], {"LLMSCHED_EPLB_UNDER_TEST": name}
            )
            res = outcomes(junit)
            print(f"    {name}: {counts(res)}")
            bad += check(
                {t: v for t, v in stock.items() if t in res}, {name: res}, f"test_eplb_algo.py[{name}]"
            )
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="unpack and run here (default: a temp folder)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "llmsched" / "vllm-sdist",
        help="where the vLLM source distribution is kept between runs",
    )
    ap.add_argument("--only", choices=("scheduler", "eplb"), default=None)
    args = ap.parse_args()
    v = version("vllm")
    work = args.work or Path(tempfile.mkdtemp(prefix="llmsched-vllm-tests-"))
    work.mkdir(parents=True, exist_ok=True)
    with step(f"fetch vLLM {v}'s tests (sdist, cache {args.cache})"):
        root = fetch_tests(v, args.cache, work)
    bad: list[str] = []
    if args.only in (None, "scheduler"):
        bad += scheduler_suite(root, work)
    if args.only in (None, "eplb"):
        bad += eplb_suite(root, work)
    if bad:
        print("FAIL: tests that pass on vLLM's own classes but not on ours:", *bad, sep="\n  ")
        raise SystemExit(1)
    print("OK: every vLLM test that passes on vLLM's own classes passes on ours")


if __name__ == "__main__":
    main()
