"""Scenarios, `llmsched compare`, reports and sweeps (docs/scenarios.md, docs/sweeps.md).

scenario.py (YAML model and validation) -> traces.py (trace folders) -> plan.py (cells, run ids, capacity)
-> runner.py on executors.py (inline, process pool, Ray) -> tables.py, report.py, plots.py; sweeps add
runlog.py (resumable JSON lines), sweep.py and sweep_report.py (CIs from stats.py). cli.py holds the typer
commands the `llmsched` app mounts.
"""
