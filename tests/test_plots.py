"""Plots a reader can trust: distinct series, the baseline on top, hidden curves named, plain log ticks, ms."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from llmsched.bench import plots


def test_thirteen_series_have_distinct_styles_and_the_baseline_stands_out() -> None:
    styles = [plots.style(i) for i in range(13)]
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 13
    assert styles[0]["color"] == "black" and styles[0]["zorder"] > max(s["zorder"] for s in styles[1:])
    assert styles[0]["linewidth"] > max(s["linewidth"] for s in styles[1:])
    assert len({(s["color"], s["linestyle"]) for s in map(plots.style, range(81))}) == 81


def test_coinciding_series_are_named() -> None:
    rng = np.random.default_rng(0)
    base = np.sort(rng.lognormal(0, 1, 500))
    same = plots.coincide({"fcfs": base, "sjf": base.copy(), "near": base * 1.01, "far": base * 2})
    assert same == {"sjf": "= fcfs", "near": "≈ fcfs"}


def test_ttft_figure_is_in_ms_with_plain_log_ticks_and_a_note(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    seen = {}
    real_save = plots._save

    def keep(fig, path):  # noqa: ANN001, ANN202
        fig.canvas.draw()
        seen["axes"] = [(a.get_xlabel(), a.get_xscale(), [t.get_text() for t in a.get_xticklabels()])
                        for a in fig.axes]
        seen["texts"] = [t.get_text() for t in fig.texts]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    rng = np.random.default_rng(1)
    x = rng.lognormal(np.log(0.05), 1.2, 400)  # seconds, spanning decades
    out = plots.ttft_cdf({"base": x, "twin": x.copy(), "fast": x / 3}, "t", tmp_path / "t.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    for label, scale, ticks in seen["axes"]:
        assert label == "time to first token (ms)" and scale == "log"
        shown = [t for t in ticks if t]
        assert shown and all("^" not in t and "\\times" not in t for t in shown), shown
        assert max(float(t.replace(",", "")) for t in shown) >= 100  # milliseconds, not seconds
    assert any("twin = base" in t for t in seen["texts"])
    plt.close("all")
