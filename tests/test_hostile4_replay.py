"""The HTTP replay guard must remember a body for as long as Bolt's signature check would accept it again.

The check accepts a timestamp up to 5 minutes either side of our clock, so a request whose timestamp is
ahead of our clock (Slack's clock ahead of ours, or ours stepped back) stays acceptable for up to the whole
span after it arrived; a guard that forgets 300 s after arrival let a captured request run twice."""

from __future__ import annotations

from slack_sdk.signature import Clock, SignatureVerifier

from handlers.slack.app import ReplayGuard


class At(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def accepted_span() -> int:
    """Seconds between the first and last moment (our clock) slack_sdk accepts one signed request."""
    ts, body = 1_800_000_000, "token=x&trigger_id=1"
    sig = SignatureVerifier("secret").generate_signature(timestamp=str(ts), body=body)
    ok = [d for d in range(-1200, 1201) if SignatureVerifier("secret", At(ts + d)).is_valid(body, str(ts), sig)]
    assert ok and min(ok) < 0 < max(ok)  # it does accept timestamps from the future
    return max(ok) - min(ok)


def test_the_replay_guard_outlives_the_signature_checks_window() -> None:
    assert ReplayGuard().seen.window >= accepted_span()
