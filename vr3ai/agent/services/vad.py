"""Voice activity detection: Silero VAD v6 (ONNX) at 8 kHz plus a turn state machine.

Choices, and why:

* **Model**: the Silero v6 ONNX file that pipecat-ai bundles (``pipecat/audio/vad/data/
  silero_vad.onnx``, MIT). We locate the file through the package's import spec and never
  import pipecat itself (its import costs ~0.5 s and a logging banner). The model runs natively
  at 8 kHz on 256-sample (32 ms) windows with a 32-sample context, so telephony audio is never
  resampled for the VAD.
* **One InferenceSession per process**, 1 intra-op and 1 inter-op thread: one window costs
  ~0.1 ms, so threads would only add wake-up overhead, and 100 calls must share 2 cores. The
  recurrent state (2x1x128) and the context live per call in :class:`SileroVad`; the session is
  stateless and shared.
* **No volume gate**: pipecat's analyzer multiplies in a smoothed volume gate (>= 0.6), which
  delays barge-in (bench/README.md, "Why the offline voice stack is built this way"). Silero's
  probability alone decides.
  A cheap energy floor (``floor_dbfs``) skips the model on near-digital silence, which is most
  of the audio of a call where Asterisk sends silence frames, so per-call CPU stays tiny.
* **State machine** with hysteresis (``threshold`` to enter, ``neg_threshold`` to leave):
  QUIET -> (``start_ms`` of speech) -> SPEAKING -> first quiet window emits ``pause`` (the
  pipeline starts a speculative transcription there) -> ``stop_ms`` of quiet emits ``end``;
  speech before that emits ``resume``. ``start_ms`` (default 96 ms = 3 windows) keeps clicks,
  coughs and line pops from starting a turn or interrupting the agent.
* **State resets**: like pipecat, the recurrent state is reset during clear non-speech every
  ~2 s of audio, because long silence or noise at 8 kHz can leave the state unable to detect
  the speech that follows.

All times in events are stream milliseconds: audio processed since the stream began, so they
are independent of wall-clock jitter. The pipeline maps them to its clock.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vr3ai.settings import VoiceSettings

SAMPLE_RATE = 8000
"""The rate the model runs at here (telephony audio, never resampled for the VAD)."""
WINDOW_8K = 256
CONTEXT_8K = 32


def bundled_silero_path() -> Path:
    """Path of the Silero ONNX model bundled in pipecat-ai, found without importing pipecat."""
    configured = VoiceSettings.from_env().silero_model
    if configured is not None:
        return configured
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pipecat-ai is not installed; it ships the Silero VAD model we use")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "audio" / "vad" / "data" / "silero_vad.onnx"
        if path.exists():
            return path
    raise FileNotFoundError("silero_vad.onnx not found in the pipecat-ai package")


class SileroModel:
    """The process-wide Silero session. Thread-safe to call (onnxruntime's ``run`` is)."""

    _shared: SileroModel | None = None
    _lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # The default spin-waiting of idle ORT threads burns CPU between 32 ms windows.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path or bundled_silero_path()
        self.session = onnxruntime.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @classmethod
    def shared(cls) -> SileroModel:
        with cls._lock:
            if cls._shared is None:
                cls._shared = SileroModel()
            return cls._shared

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """``window``: float32 (1, 32 + 256) (context + samples). Returns (probability, state)."""
        out, new_state = self.session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(out[0][0]), new_state


@dataclass
class VadParams:
    threshold: float = 0.5
    """Probability at or above which a window counts as speech."""
    neg_threshold: float = 0.35
    """Probability below which a window counts as quiet (hysteresis against flapping)."""
    start_ms: int = 96
    """Speech needed before a turn starts (and before the agent is interrupted)."""
    stop_ms: int = 200
    """Quiet needed after speech before the turn ends."""
    floor_dbfs: float = -60.0
    """Windows quieter than this are quiet without running the model."""
    reset_after_ms: int = 2000
    """Reset the model state during clear non-speech at most this often."""


class VadState(Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


VadEventKind = Literal["start", "pause", "resume", "end"]


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: VadEventKind
    at_ms: int
    """Stream time at which the event was decided (end of the deciding window)."""
    speech_start_ms: int
    """Stream time where the current speech began (start of its first speech window)."""
    speech_end_ms: int
    """For pause/end: stream time where speech stopped (start of the first quiet window)."""


class SileroVad:
    """Per-call VAD stream: feed PCM16 8 kHz of any length, get events."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: SileroModel, params: VadParams | None = None) -> None:
        self.model = model
        self.params = params or VadParams()
        self.state = VadState.QUIET
        self._rnn = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_8K, dtype=np.float32)
        self._buf = bytearray()
        self._samples = 0  # samples consumed into windows so far
        self._run_ms = 0  # speech accumulated while STARTING
        self._quiet_ms = 0  # quiet accumulated while STOPPING
        self._speech_start = 0
        self._speech_end = 0
        self._since_reset_ms = 0
        self._low_windows = 0
        self.windows = 0
        self.model_runs = 0
        self.last_prob = 0.0

    @property
    def stream_ms(self) -> int:
        return self._samples * 1000 // SAMPLE_RATE

    @property
    def quiet_ms(self) -> int:
        """Quiet so far in STOPPING (0 otherwise)."""
        return self._quiet_ms if self.state is VadState.STOPPING else 0

    @property
    def speech_span(self) -> tuple[int, int]:
        """(start, end) stream ms of the current speech; end is the start of the current pause."""
        return self._speech_start, self._speech_end

    def reset(self) -> None:
        """Forget the current speech (e.g. the agent muted the caller); keeps the stream clock."""
        self.state = VadState.QUIET
        self._run_ms = 0
        self._quiet_ms = 0

    def _reset_model(self) -> None:
        self._rnn = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_8K, dtype=np.float32)
        self._since_reset_ms = 0

    def _prob(self, samples: np.ndarray) -> float:
        x = samples.astype(np.float32) * (1.0 / 32768.0)
        energy = float(np.dot(x, x)) / len(x)
        floor = 10.0 ** (self.params.floor_dbfs / 10.0)
        if energy < floor:
            # Skipping the model is equivalent to feeding it silence it would call quiet; keep the
            # context aligned so the next window sees what really preceded it.
            self._context = x[-CONTEXT_8K:]
            return 0.0
        window = np.concatenate((self._context, x)).reshape(1, -1)
        prob, self._rnn = self.model.infer(window, self._rnn)
        self._context = x[-CONTEXT_8K:]
        self.model_runs += 1
        return prob

    def process(self, pcm: bytes) -> list[VadEvent]:
        self._buf += pcm
        events: list[VadEvent] = []
        win_bytes = WINDOW_8K * 2
        win_ms = WINDOW_8K * 1000 // SAMPLE_RATE  # 32
        p = self.params
        while len(self._buf) >= win_bytes:
            samples = np.frombuffer(bytes(self._buf[:win_bytes]), dtype="<i2")
            del self._buf[:win_bytes]
            start_ms = self._samples * 1000 // SAMPLE_RATE
            self._samples += WINDOW_8K
            end_ms = self._samples * 1000 // SAMPLE_RATE
            prob = self._prob(samples)
            self.last_prob = prob
            self.windows += 1
            self._since_reset_ms += win_ms
            self._low_windows = self._low_windows + 1 if prob < 0.1 else 0

            speech = prob >= p.threshold
            quiet = prob < p.neg_threshold
            st = self.state
            if st in (VadState.QUIET, VadState.STARTING):
                if speech:
                    if st is VadState.QUIET:
                        self.state = VadState.STARTING
                        self._speech_start = start_ms
                        self._run_ms = 0
                    self._run_ms += win_ms
                    if self._run_ms >= p.start_ms:
                        self.state = VadState.SPEAKING
                        events.append(VadEvent("start", end_ms, self._speech_start, end_ms))
                elif quiet:
                    self.state = VadState.QUIET
                    self._run_ms = 0
            elif st is VadState.SPEAKING:
                if quiet:
                    self.state = VadState.STOPPING
                    self._speech_end = start_ms
                    self._quiet_ms = win_ms
                    events.append(VadEvent("pause", end_ms, self._speech_start, start_ms))
                    if self._quiet_ms >= p.stop_ms:
                        self.state = VadState.QUIET
                        events.append(VadEvent("end", end_ms, self._speech_start, start_ms))
            elif st is VadState.STOPPING:
                if speech:
                    self.state = VadState.SPEAKING
                    events.append(VadEvent("resume", end_ms, self._speech_start, self._speech_end))
                else:
                    self._quiet_ms += win_ms
                    if self._quiet_ms >= p.stop_ms:
                        self.state = VadState.QUIET
                        events.append(
                            VadEvent("end", end_ms, self._speech_start, self._speech_end)
                        )

            if (
                self.state is VadState.QUIET
                and self._since_reset_ms >= p.reset_after_ms
                and self._low_windows >= 5
            ):
                self._reset_model()
        return events

    def stats(self) -> dict[str, Any]:
        return {"windows": self.windows, "model_runs": self.model_runs}
