"""``PipelineConfig``: the per-call knobs of the voice agent, read from a workflow's settings.

Its own module so that the parts of the agent (``turns``, ``speaker``, ``timers``) and the
coordinator (``pipeline``) can all read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vr3ai.workflows.definition import Settings as WorkflowSettings

_WORKFLOW = WorkflowSettings.model_fields
"""The knobs a workflow sets have their defaults written once, in the workflow's settings model: a
call built without a workflow behaves like one whose workflow left them out."""

DEFAULT_MAX_DURATION_MESSAGE = "I'm sorry, we have reached the time limit for this call. Goodbye."


@dataclass
class PipelineConfig:
    barge_in: bool = _WORKFLOW["barge_in"].default
    turn_end_silence_ms: int = _WORKFLOW["turn_end_silence_ms"].default
    speech_start_ms: int = 96
    """Speech needed before a turn starts / the agent is interrupted (short noises are ignored)."""
    vad_threshold: float = 0.5
    vad_floor_dbfs: float = -60.0
    """Windows quieter than this skip the VAD model (near-digital silence; saves CPU per call)."""
    idle_timeout_s: float = _WORKFLOW["idle_timeout_s"].default
    """Caller silence (after the agent finished speaking) before an ``idle`` turn; 0 disables."""
    max_call_duration_s: float = float(_WORKFLOW["max_call_duration_s"].default)
    max_duration_message: str = DEFAULT_MAX_DURATION_MESSAGE
    speculative_stt: bool = True
    spec_after_ms: int = 64
    """Quiet needed before the speculative transcription starts while the STT pool is busy.
    One 32 ms quiet window happens inside words too; two rarely do, and each wasted run costs
    ~0.3 CPU s (14 vs 8 discarded runs per 20 turns, measured)."""
    spec_after_ms_idle: int = 32
    """The same when an STT worker is idle: the early start then costs nothing but idle CPU and
    saves ~40 ms of transcript latency (p50 145 vs 188 ms after VAD end, measured)."""
    pre_roll_ms: int = 300
    min_speech_ms: int = 150
    """Shorter speech is treated as noise and never transcribed."""
    max_utterance_s: float = 30.0
    first_clause_words: int = 5
    synth_ahead: int = 2
    hangup_grace_ms: int = 3000
    """After the last queued audio should have been heard, wait at most this long for its mark."""

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PipelineConfig:
        c = cls()
        if "barge_in" in settings:
            c.barge_in = bool(settings["barge_in"])
        for key, attr, conv in (
            ("turn_end_silence_ms", "turn_end_silence_ms", int),
            ("speech_start_ms", "speech_start_ms", int),
            ("idle_timeout_s", "idle_timeout_s", float),
            ("max_call_duration_s", "max_call_duration_s", float),
            ("max_duration_message", "max_duration_message", str),
        ):
            if settings.get(key) is not None:
                setattr(c, attr, conv(settings[key]))
        return c
