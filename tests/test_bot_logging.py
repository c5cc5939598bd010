"""Log lines that an outage would repeat for every call stay readable (bot/common/logs.py's Sparse)."""
from __future__ import annotations

import logging

from bot.common.logs import Sparse


def test_a_warning_an_outage_repeats_per_call_is_logged_once_per_interval_with_a_count(caplog):
    now = [100.0]
    sparse = Sparse(logging.getLogger("rujokes.test.sparse"), interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="rujokes.test.sparse"):
        for second in range(25):  # one call a second for 25 s
            now[0] = 100.0 + second
            sparse.warning("pacing skipped for %s", "SendMessage")
    assert [r.getMessage() for r in caplog.records] == [
        "pacing skipped for SendMessage",
        "pacing skipped for SendMessage (and 9 more like it since)",
        "pacing skipped for SendMessage (and 9 more like it since)",
    ]
