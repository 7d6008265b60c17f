"""The benchmark harness's pure parts (bench/benchlib.py) with fake timings: statistics,
ratios, targets (PASS / MISS / n/a, never a PASS from missing data), variants, the table."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bl() -> ModuleType:
    return load_bench("benchlib")


def test_summarize_uses_the_median(bl: ModuleType) -> None:
    s = bl.summarize([0.010, 0.012, 0.011, 0.500, 0.009])  # one outlier
    assert s["median"] == pytest.approx(0.011)
    assert s["min"] == 0.009 and s["max"] == 0.500 and s["n"] == 5
    assert s["mean"] > s["median"]
    assert bl.summarize([0.2])["stdev"] == 0.0
    assert bl.summarize([1.0, 2.0, 3.0, 4.0])["median"] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        bl.summarize([])


def test_ratio_and_net_ratio(bl: ModuleType) -> None:
    assert bl.ratio(0.03, 0.01) == pytest.approx(3.0)
    assert bl.ratio(None, 0.01) is None
    assert bl.ratio(0.01, 0.0) is None
    assert bl.ratio(0.01, None) is None
    # exec loop 1.2 s under glassbreak (start-up 0.7 s) vs 0.4 s bare (start-up 0.001 s)
    assert bl.net_ratio(1.2, 0.4, 0.7, 0.001) == pytest.approx(0.5 / 0.399)
    assert bl.net_ratio(1.2, 0.4, None, 0.001) is None
    assert bl.net_ratio(1.8, 0.25, 3.4, 0.004) is None  # start-up noisier than the work


def _medians(**kw: float | None) -> dict[str, float | None]:
    base: dict[str, float | None] = {
        "startup/bare": 0.0008, "startup/bwrap": 0.004, "startup/firejail": 0.030,
        "startup/glassbreak-cold": 0.700, "startup/glassbreak-warm": 0.009,
        "exec-heavy/bare": 0.400, "exec-heavy/glassbreak-warm": 0.560,
        "exec-heavy/glassbreak-cold": 1.300,
        "syscall-heavy/bare": 0.500, "syscall-heavy/glassbreak-warm": 0.520,
        "syscall-heavy/glassbreak-cold": 1.250,
    }
    base.update({k.replace("__", "/").replace("_", "-"): v for k, v in kw.items()})
    return base


def _by_name(results: list[Any]) -> dict[str, Any]:
    return {r.target.name: r for r in results}


def test_targets_pass_and_miss(bl: ModuleType) -> None:
    res = _by_name(bl.evaluate(bl.default_targets(), _medians()))
    assert res["warm run /bin/true <= 2.5x bwrap"].status == "PASS"        # 2.25x
    assert res["warm run /bin/true <= 2.5x bwrap"].value == pytest.approx(2.25)
    assert res["warm run /bin/true <= firejail"].status == "PASS"
    assert res["cold run /bin/true < 1.5 s"].status == "PASS"
    assert res["exec-heavy (warm) <= 1.5x bare"].status == "PASS"          # 1.4x
    assert res["syscall-heavy (warm) <= 1.10x bare"].status == "PASS"      # 1.04x
    assert res["exec-heavy (cold) <= 1.5x bare"].status == "MISS"          # 3.25x
    assert res["syscall-heavy (cold) <= 1.10x bare"].status == "MISS"

    slow = _by_name(bl.evaluate(bl.default_targets(),
                                _medians(startup__glassbreak_warm=0.040,
                                         startup__glassbreak_cold=1.6)))
    assert slow["warm run /bin/true <= 2.5x bwrap"].status == "MISS"       # 10x
    assert slow["warm run /bin/true <= firejail"].status == "MISS"         # slower than firejail
    assert slow["cold run /bin/true < 1.5 s"].status == "MISS"


def test_target_limit_is_inclusive(bl: ModuleType) -> None:
    t = bl.Target("x", "issue 3", "ratio", "a", 1.5, "b")
    (r,) = bl.evaluate([t], {"a": 0.15, "b": 0.1})
    assert r.status == "PASS"
    (r,) = bl.evaluate([t], {"a": 0.1501, "b": 0.1})
    assert r.status == "MISS"


def test_missing_variant_is_na_with_its_reason_never_pass(bl: ModuleType) -> None:
    med = _medians(startup__glassbreak_warm=None)
    reasons = {"startup/glassbreak-warm": "`glassbreak serve` has no run socket in this build"}
    res = _by_name(bl.evaluate(bl.default_targets(), med, reasons))
    r = res["warm run /bin/true <= 2.5x bwrap"]
    assert r.status == "n/a" and r.value is None
    assert "no run socket" in r.why and "startup/glassbreak-warm" in r.why
    (z,) = bl.evaluate([bl.Target("z", "t", "ratio", "a", 1.0, "b")], {"a": 1.0, "b": 0.0})
    assert z.status == "n/a"
    assert z.to_dict()["status"] == "n/a"
    with pytest.raises(ValueError):
        bl.evaluate([bl.Target("k", "t", "bogus", "a", 1.0)], {"a": 1.0})


def test_variants_are_names_and_argv(bl: ModuleType) -> None:
    ws = [bl.Wrapper("bare", ()), bl.Wrapper("bwrap", ("bwrap", "--unshare-pid")),
          bl.Wrapper("glassbreak-warm", ("glassbreak",), (("GLASSBREAK_SOCKET", "/s"),), "warm")]
    loads = bl.workloads(execs=7, dd_count=99, bench_profile="/tmp/bench.yaml")
    vs = {v.name: v for v in bl.make_variants(ws, loads, "/venv/bin/glassbreak",
                                              {"exec-heavy": ["bare", "glassbreak-warm"]})}
    assert vs["startup/bare"].argv == ("/bin/true",)
    assert vs["startup/bwrap"].argv == ("bwrap", "--unshare-pid", "/bin/true")
    assert vs["startup/glassbreak-warm"].argv == (
        "/venv/bin/glassbreak", "run", "--profile", "readonly", "--", "/bin/true")
    assert vs["startup/glassbreak-warm"].env == (("GLASSBREAK_SOCKET", "/s"),)
    assert vs["startup/glassbreak-warm"].phase == "warm"
    assert "exec-heavy/bwrap" not in vs  # restricted by `only`
    ex = vs["exec-heavy/glassbreak-warm"].argv
    assert ex[:5] == ("/venv/bin/glassbreak", "run", "--profile", "/tmp/bench.yaml", "--")
    assert ex[5:7] == ("/bin/sh", "-c") and "-lt 7 ]" in ex[7]
    assert vs["syscall-heavy/bare"].argv[-1] == "count=99"


def test_render_table_and_targets(bl: ModuleType) -> None:
    results = {
        "startup/bare": {"group": "startup", "status": "ok",
                         "summary": bl.summarize([0.001, 0.001, 0.001])},
        "startup/bwrap": {"group": "startup", "status": "ok",
                          "summary": bl.summarize([0.004, 0.005, 0.003])},
        "startup/firejail": {"group": "startup", "status": "n/a",
                             "reason": "firejail is not installed"},
    }
    text = bl.render_table(results, {"startup": "startup/bare"})
    assert "4.00x" in text and "1.00x" in text
    assert "firejail is not installed" in text
    tr = bl.evaluate(bl.default_targets()[:1], {"startup/glassbreak-warm": 0.009,
                                                "startup/bwrap": 0.004})
    line = bl.render_targets(tr)
    assert line.startswith("PASS") and "2.25x" in line and "issue 5" in line
    assert bl.fmt_seconds(0.0005) == "500 us" and bl.fmt_seconds(2.0) == "2.00 s"
    assert bl.fmt_seconds(None) == "n/a"


def test_paired_delta_and_network_targets(bl: ModuleType) -> None:
    # drift hits both of each pair alike: the paired median sees the 0.3 ms, not the drift
    with_layer = [0.010 + i * 0.002 + 0.0003 for i in range(9)]
    without = [0.010 + i * 0.002 for i in range(9)]
    assert bl.paired_delta(with_layer, without) == pytest.approx(0.0003)
    assert bl.paired_delta([], []) is None
    res = _by_name(bl.evaluate(bl.default_targets(), {
        **_medians(), "startup/network-layer-delta": 0.0003, "connect-heavy/bare": 0.70,
        "connect-heavy/glassbreak-warm": 0.72}))
    assert res["warm run: network layer adds <= 0.5 ms"].status == "PASS"
    assert res["connect-heavy (warm) <= 1.10x bare"].status == "PASS"
    assert res["dns-heavy (warm) <= 1.10x bare"].status == "n/a"  # not measured: never PASS
    assert bl.fmt_seconds(-0.0002) == "-200 us"


def test_mcp_latency_table() -> None:
    m = load_bench("mcp_latency")
    data = {"results": {
        "cli-warm": {"median_ms": 10.0, "min_ms": 8.0, "max_ms": 20.0, "n": 3},
        "mcp-stdio": {"median_ms": 12.5, "min_ms": 9.0, "max_ms": 30.0, "n": 3,
                      "daemon_run_ms": 4.2, "vs_cli_warm": 1.25}}}
    text = m.render(data)
    assert "cli-warm" in text and "1.25x" in text and "4.20ms" in text
