"""The caller's side: :class:`KeyedClient` (score tables by key across servers, every
answer checked) and :mod:`.cli` (``keyed-score``).

Knows only the wire format. May import the shared base (``keyed_serving.keys``,
``tables``, ``formats``); never the serving or model parts, scikit-learn or BentoML, so a
client machine needs none of them.
"""

from keyed_serving.client.keyed_client import InvalidKeys, KeyedClient, ScoringError, ScoringStopped

__all__ = ["InvalidKeys", "KeyedClient", "ScoringError", "ScoringStopped"]
