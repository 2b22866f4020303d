"""Test doubles, one module per seam (like livekit-agents' ``tests/fake_*.py``).

* ``call_audio``: :class:`~vr3ai.media.interface.CallAudio` (the media session as the agent sees it)
* ``virtual_time``: the event loop's clock, for tests that must not wait in real time

Benchmarks may import them too; the production package never does.
"""
