"""Which nodes' sensors are silent: no report with a fresh heartbeat for `after` seconds.

Nothing happens when a sensor goes silent, so the reconciler asks `due` for the
soonest moment a heartbeat crosses the threshold and wakes itself then.

The heartbeat is the sensor's clock, compared with the operator's. One that is
ahead of the operator's clock is taken as the moment the operator first saw it:
a sensor whose clock runs an hour fast gets `after` seconds of trust from that
report, not an hour more.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from stockade.policy.reports import NodePolicyReport

DEFAULT_AFTER = 60.0  # seconds: six missed heartbeats of a sensor beating every 10 s


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Heartbeats:
    """The silent nodes as of the last `update`, each with a message detail that doesn't
    change while the node stays silent (so a silent node doesn't rewrite statuses)."""

    def __init__(self, after: float = DEFAULT_AFTER) -> None:
        self.after = timedelta(seconds=after)
        self.silent: dict[str, str] = {}  # node → detail
        self.due: datetime | None = None  # the soonest a node not silent now becomes silent
        self._seen: dict[str, tuple[datetime, datetime]] = {}  # node → (heartbeat, first seen)

    def update(self, reports: Mapping[str, NodePolicyReport], now: datetime) -> set[str]:
        """Judge every node's report at `now` (the operator's clock); returns the nodes
        whose silence (or its detail) changed since the last update."""
        seen: dict[str, tuple[datetime, datetime]] = {}
        silent: dict[str, str] = {}
        due: datetime | None = None
        for node, report in reports.items():
            beat = report.sensor.heartbeat_time  # the CRD admits only RFC 3339, with an offset
            known = self._seen.get(node)
            first = known[1] if known is not None and known[0] == beat else now
            seen[node] = (beat, first)
            trusted = min(beat, first)
            if now - trusted >= self.after:
                ahead = (
                    f" (ahead of the operator's clock; seen {_stamp(first)})"
                    if beat > first
                    else ""
                )
                silent[node] = (
                    f"no heartbeat for over {self.after.total_seconds():g} s"
                    f" (last {_stamp(beat)}{ahead})"
                )
            elif due is None or trusted + self.after < due:
                due = trusted + self.after
        changed = {
            n for n in silent.keys() | self.silent.keys() if silent.get(n) != self.silent.get(n)
        }
        self._seen, self.silent, self.due = seen, silent, due
        return changed
