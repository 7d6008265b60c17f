"""The daemon soaked (bench/soak.py, short form): 3,000 warm runs through one real daemon, with
bad input on its socket every 50 runs; every run succeeds with its own output, every bad input
gets a clear error line (or the client's own close), and the daemon's fds, threads and memory
end where they were after the warm-up (it once leaked a pidfd per run and died at ~1,000).
The first 1,000 runs are the warm-up: the daemon's caches and arenas fill over about that many
(~16 MB with every layer on, then flat), so the checks look at runs 1,000-3,000: more than 4 MB
between 2,000 and 3,000 (2 kB a run) or 16 MB over the window is a leak."""

from __future__ import annotations

from tests.conftest import is_root, load_bench, require


def test_thousands_of_warm_runs_leave_the_daemon_flat() -> None:
    require(is_root(), "the daemon needs root")
    soak = load_bench("soak")
    res = soak.measure(3000, warmup=1000)
    assert res["ok"], res["problems"]
    assert res["at_end"]["fds"] <= res["after_warmup"]["fds"]
    # every bad input was answered with an error line naming the problem, or closed by us
    for answer in res["bad_inputs"]:
        assert answer == "client closed at once" or '"error"' in answer, answer
    assert sum(res["bad_inputs"].values()) == 3000 // 50
