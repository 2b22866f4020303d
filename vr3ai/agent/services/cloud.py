"""Thin cloud STT/TTS adapters behind the same base classes as the offline engines.

No vendor SDKs: each adapter is one HTTP request (httpx) or one WebSocket session (websockets)
speaking the vendor's documented wire format, which keeps the install small and lets tests run
them against local fake servers on 127.0.0.1 (``tests/unit/agent/fake_cloud.py``). Every adapter
takes a ``base_url`` so it also works with self-hosted compatible servers (e.g. an
OpenAI-compatible Speaches/Kokoro server).

Keys come from ``CallContext.secrets`` by name (see ``vr3ai.agent.factory``). They are held in a
private attribute, excluded from ``repr``, sent only in the vendor's auth header, and never put
into exception messages or logs: errors carry the HTTP status and the vendor's error text only.

Requests are made for a tenant, so they follow the outbound policy (``vr3ai.core.outbound``):
vetted addresses only, no redirects, for HTTP and for Deepgram's WebSocket alike.

Wire formats used (vendor docs):

* Deepgram streaming STT: ``wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=8000
  &channels=1&model=...``, header ``Authorization: Token <key>``; binary audio frames, then
  ``{"type": "CloseStream"}``; the server answers ``{"type": "Results", "is_final": bool,
  "channel": {"alternatives": [{"transcript", "confidence"}]}}`` messages, a ``Metadata``
  message, and closes.
* OpenAI STT: ``POST /v1/audio/transcriptions`` multipart (``file`` WAV, ``model``,
  ``language``, ``response_format=json``) -> ``{"text": ...}``.
* OpenAI TTS: ``POST /v1/audio/speech`` JSON (``model``, ``input``, ``voice``,
  ``response_format="pcm"``) -> raw PCM16 24 kHz mono, streamed.
* ElevenLabs TTS: ``POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_16000``, header
  ``xi-api-key``, JSON ``{"text", "model_id"}`` -> raw PCM16 at the requested rate, streamed.
* Cartesia TTS: ``POST /tts/bytes``, headers ``Authorization: Bearer <key>`` and
  ``Cartesia-Version``, JSON ``{"model_id", "transcript", "voice": {"mode": "id", "id"},
  "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
  "language"}`` -> raw PCM16, streamed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import numpy as np
import soxr

from vr3ai.agent.services.audio import write_wav
from vr3ai.agent.services.base import (
    ServiceError,
    SpeechToText,
    TextToSpeech,
    Transcript,
    filter_transcript,
)
from vr3ai.core.outbound import OutboundPolicy, OutboundRefused, default_policy

_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.text[:200]
    except Exception:
        body = ""
    return f"HTTP {resp.status_code}: {body}".strip()


class _KeyHolder:
    """Keeps the key out of repr() and vars() dumps in tracebacks."""

    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        self._key = key

    def get(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return "<secret>"


class _HttpMixin:
    _client: httpx.AsyncClient | None = None
    policy: OutboundPolicy | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = (self.policy or default_policy()).http_client(timeout=_TIMEOUT)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class _StreamResampler:
    """Resample a chunked PCM16 stream (odd byte counts allowed) with soxr's streaming API."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self._rs = soxr.ResampleStream(src, dst, 1, dtype="int16") if src != dst else None
        self._carry = b""

    def feed(self, data: bytes, last: bool = False) -> bytes:
        data = self._carry + data
        cut = len(data) - (len(data) % 2)
        self._carry, data = data[cut:], data[:cut]
        if self._rs is None:
            return data
        x = np.frombuffer(data, dtype="<i2")
        return np.asarray(self._rs.resample_chunk(x, last=last), dtype="<i2").tobytes()


# --------------------------------------------------------------------------- STT
class DeepgramSTT(SpeechToText):
    engine = "deepgram"

    def __init__(
        self,
        api_key: str,
        model: str = "nova-3",
        language: str = "en",
        base_url: str = "wss://api.deepgram.com",
        chunk_ms: int = 100,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.policy = policy
        self._key = _KeyHolder(api_key)
        self.model = model
        self.language = language
        self.base_url = base_url.rstrip("/")
        self.chunk_ms = chunk_ms

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        from websockets.exceptions import WebSocketException

        t0 = time.perf_counter()
        query = urlencode(
            {
                "model": self.model,
                "language": self.language,
                "encoding": "linear16",
                "sample_rate": sample_rate,
                "channels": 1,
                "punctuate": "true",
                "smart_format": "true",
                "interim_results": "false",
            }
        )
        finals: list[str] = []
        confidences: list[float] = []
        step = max(2, sample_rate * 2 * self.chunk_ms // 1000)
        try:
            async with (self.policy or default_policy()).websocket(
                f"{self.base_url}/v1/listen?{query}",
                additional_headers={"Authorization": f"Token {self._key.get()}"},
                open_timeout=5,
                close_timeout=2,
            ) as ws:
                # The utterance is already complete: send it as fast as the socket takes it.
                for i in range(0, len(pcm), step):
                    await ws.send(pcm[i : i + step])
                await ws.send(json.dumps({"type": "CloseStream"}))
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    msg = json.loads(raw)
                    if msg.get("type") == "Results" and msg.get("is_final"):
                        alts = (msg.get("channel") or {}).get("alternatives") or []
                        if alts and alts[0].get("transcript"):
                            finals.append(alts[0]["transcript"])
                            confidences.append(float(alts[0].get("confidence", 1.0)))
                    elif msg.get("type") == "Error" or "err_code" in msg:
                        raise ServiceError(f"deepgram: {msg.get('description') or msg.get('err_msg')}")
        except OutboundRefused as exc:
            raise ServiceError(f"deepgram: {exc}") from None
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise ServiceError(f"deepgram: {type(exc).__name__}") from None
        ms = int((time.perf_counter() - t0) * 1000)
        text = " ".join(finals)
        if confidences and min(confidences) < 0.2:
            return Transcript("", text, ms, dropped="low confidence")
        return filter_transcript(text, stt_ms=ms)


class OpenAISTT(_HttpMixin, SpeechToText):
    engine = "openai"

    def __init__(
        self,
        api_key: str,
        model: str = "gpt-4o-mini-transcribe",
        language: str = "en",
        base_url: str = "https://api.openai.com/v1",
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.policy = policy
        self._key = _KeyHolder(api_key)
        self.model = model
        self.language = language
        self.base_url = base_url.rstrip("/")

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        t0 = time.perf_counter()
        try:
            resp = await self._http().post(
                f"{self.base_url}/audio/transcriptions",
                headers={"Authorization": f"Bearer {self._key.get()}"},
                data={"model": self.model, "language": self.language, "response_format": "json"},
                files={"file": ("turn.wav", write_wav(pcm, sample_rate), "audio/wav")},
            )
        except OutboundRefused as exc:
            raise ServiceError(f"openai stt: {exc}") from None
        except httpx.HTTPError as exc:
            raise ServiceError(f"openai stt: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise ServiceError(f"openai stt: {_error_text(resp)}")
        text = str(resp.json().get("text", ""))
        return filter_transcript(text, stt_ms=int((time.perf_counter() - t0) * 1000))


# --------------------------------------------------------------------------- TTS
class _HttpStreamTTS(_HttpMixin, TextToSpeech):
    """Common body: POST, stream raw PCM16 at ``source_rate``, resample to ``sample_rate``."""

    source_rate = 24000

    def _request(self, text: str) -> tuple[str, dict[str, str], dict[str, object]]:
        raise NotImplementedError

    async def stream(self, text: str, urgent: bool = True) -> AsyncIterator[bytes]:
        text = text.strip()
        if not text:
            return
        url, headers, body = self._request(text)
        rs = _StreamResampler(self.source_rate, self.sample_rate)
        try:
            async with self._http().stream("POST", url, headers=headers, json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise ServiceError(f"{self.engine} tts: {_error_text(resp)}")
                async for chunk in resp.aiter_bytes():
                    out = rs.feed(chunk)
                    if out:
                        yield out
        except OutboundRefused as exc:
            raise ServiceError(f"{self.engine} tts: {exc}") from None
        except httpx.HTTPError as exc:
            raise ServiceError(f"{self.engine} tts: {type(exc).__name__}") from None
        tail = rs.feed(b"", last=True)
        if tail:
            yield tail

    async def synthesize(self, text: str) -> bytes:
        out = bytearray()
        async for chunk in self.stream(text):
            out += chunk
        return bytes(out)


class OpenAITTS(_HttpStreamTTS):
    engine = "openai"
    metered = True
    source_rate = 24000  # response_format=pcm is fixed at 24 kHz

    def __init__(
        self,
        api_key: str,
        voice: str = "alloy",
        model: str = "gpt-4o-mini-tts",
        base_url: str = "https://api.openai.com/v1",
        sample_rate: int = 8000,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.policy = policy
        self._key = _KeyHolder(api_key)
        self.voice = voice
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.sample_rate = sample_rate

    def _request(self, text: str) -> tuple[str, dict[str, str], dict[str, object]]:
        return (
            f"{self.base_url}/audio/speech",
            {"Authorization": f"Bearer {self._key.get()}"},
            {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"},
        )


class ElevenLabsTTS(_HttpStreamTTS):
    engine = "elevenlabs"
    metered = True

    def __init__(
        self,
        api_key: str,
        voice: str = "21m00Tcm4TlvDq8ikWAM",
        model: str = "eleven_flash_v2_5",
        base_url: str = "https://api.elevenlabs.io",
        source_rate: int = 16000,
        sample_rate: int = 8000,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.policy = policy
        self._key = _KeyHolder(api_key)
        self.voice = voice
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.source_rate = source_rate
        self.sample_rate = sample_rate

    def _request(self, text: str) -> tuple[str, dict[str, str], dict[str, object]]:
        return (
            f"{self.base_url}/v1/text-to-speech/{self.voice}/stream?output_format=pcm_{self.source_rate}",
            {"xi-api-key": self._key.get()},
            {"text": text, "model_id": self.model},
        )


class CartesiaTTS(_HttpStreamTTS):
    engine = "cartesia"
    metered = True

    def __init__(
        self,
        api_key: str,
        voice: str,
        model: str = "sonic-2",
        base_url: str = "https://api.cartesia.ai",
        version: str = "2025-04-16",
        language: str = "en",
        sample_rate: int = 8000,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.policy = policy
        self._key = _KeyHolder(api_key)
        self.voice = voice
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.language = language
        self.sample_rate = sample_rate
        self.source_rate = sample_rate  # Cartesia renders 8 kHz directly

    def _request(self, text: str) -> tuple[str, dict[str, str], dict[str, object]]:
        return (
            f"{self.base_url}/tts/bytes",
            {"Authorization": f"Bearer {self._key.get()}", "Cartesia-Version": self.version},
            {
                "model_id": self.model,
                "transcript": text,
                "voice": {"mode": "id", "id": self.voice},
                "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": self.source_rate},
                "language": self.language,
            },
        )


__all__ = [
    "CartesiaTTS",
    "DeepgramSTT",
    "ElevenLabsTTS",
    "OpenAISTT",
    "OpenAITTS",
]
