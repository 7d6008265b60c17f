"""The daemon soaked (bench/soak.py, short form): 1,000 warm runs through one real daemon, with
bad input on its socket every 50 runs; every run succeeds with its own output, every bad input
gets a clear error line (or the client's own close), and the daemon's fds, threads and memory
end where they were after the warm-up (it once leaked a pidfd per run and died at ~1,000)."""

from __future__ import annotations

from tests.conftest import is_root, load_bench, require


def test_thousand_warm_runs_leave_the_daemon_flat() -> None:
    require(is_root(), "the daemon needs root")
    soak = load_bench("soak")
    res = soak.measure(1000)
    assert res["ok"], res["problems"]
    assert res["at_end"]["fds"] <= res["after_warmup"]["fds"]
    # every bad input was answered with an error line naming the problem, or closed by us
    for answer in res["bad_inputs"]:
        assert answer == "client closed at once" or '"error"' in answer, answer
    assert sum(res["bad_inputs"].values()) == 1000 // 50
