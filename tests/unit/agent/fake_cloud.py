"""Local fake vendor servers on 127.0.0.1 speaking the documented wire formats of Deepgram
(streaming STT over WebSocket), OpenAI (audio transcriptions and speech), ElevenLabs (stream
speech) and Cartesia (tts/bytes). Deliberately strict about auth headers and request shapes, so
the adapters are tested against the protocol, not against themselves."""

from __future__ import annotations

import asyncio
import json
import wave
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

KEY = "sk-test-SECRET-1234"


def pcm_tone(rate: int, ms: int, freq: float = 440.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeHttpVendor:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeHttpVendor:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                req = Request(method, parts.path, parse_qs(parts.query), headers, body)
                self.requests.append(req)
                status, ctype, chunks = self.route(req)
                head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
                writer.write(head.encode())
                for c in chunks:
                    writer.write(f"{len(c):x}\r\n".encode() + c + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.005)  # a real stream arrives in pieces
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _split(pcm: bytes) -> list[bytes]:
        # Odd-sized pieces: adapters must cope with a sample split across chunks.
        return [pcm[:1001], pcm[1001:5003], pcm[5003:]]

    def route(self, req: Request) -> tuple[int, str, list[bytes]]:
        err = (401, "application/json", [b'{"error": {"message": "invalid api key"}}'])
        h = req.headers
        if req.path == "/v1/audio/speech":
            if h.get("authorization") != f"Bearer {KEY}":
                return err
            body = req.json()
            assert body["response_format"] == "pcm" and body["input"] and body["voice"] and body["model"]
            return 200, "audio/pcm", self._split(pcm_tone(24000, 500))
        if req.path == "/v1/audio/transcriptions":
            if h.get("authorization") != f"Bearer {KEY}":
                return err
            msg = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {h['content-type']}\r\n\r\n".encode() + req.body
            )
            fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            assert fields["model"].get_content().strip() and fields["response_format"].get_content() == "json"
            with wave.open(BytesIO(fields["file"].get_payload(decode=True))) as w:
                assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            return 200, "application/json", [json.dumps({"text": "Hello from OpenAI."}).encode()]
        if req.path.startswith("/v1/text-to-speech/") and req.path.endswith("/stream"):
            if h.get("xi-api-key") != KEY:
                return err
            fmt = req.query["output_format"][0]
            assert fmt.startswith("pcm_") and req.json()["text"]
            return 200, "audio/pcm", self._split(pcm_tone(int(fmt[4:]), 500))
        if req.path == "/tts/bytes":
            if h.get("authorization") != f"Bearer {KEY}" or not h.get("cartesia-version"):
                return err
            body = req.json()
            of = body["output_format"]
            assert of["container"] == "raw" and of["encoding"] == "pcm_s16le" and body["voice"]["mode"] == "id"
            return 200, "application/octet-stream", self._split(pcm_tone(of["sample_rate"], 500))
        return 404, "text/plain", [b"not found"]


class FakeDeepgram:
    """``/v1/listen``: binary linear16 frames in, ``Results`` JSON out, closes after CloseStream."""

    def __init__(self, transcript: str = "hello from deepgram") -> None:
        self.transcript = transcript
        self.received = 0
        self.query: dict[str, list[str]] = {}
        self.port = 0
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> FakeDeepgram:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._auth)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    def _auth(self, connection: Any, request: Any) -> Any:
        if request.headers.get("Authorization") != f"Token {KEY}":
            return connection.respond(401, "invalid credentials\n")
        return None

    async def _handle(self, ws: Any) -> None:
        self.query = parse_qs(urlsplit(ws.request.path).query)
        assert urlsplit(ws.request.path).path == "/v1/listen"
        async for msg in ws:
            if isinstance(msg, bytes):
                self.received += len(msg)
                continue
            if json.loads(msg).get("type") == "CloseStream":
                break
        words = self.transcript.split()
        half = len(words) // 2
        for i, part in enumerate((" ".join(words[:half]), " ".join(words[half:]))):
            await ws.send(
                json.dumps(
                    {
                        "type": "Results",
                        "channel_index": [0, 1],
                        "duration": 1.0,
                        "start": float(i),
                        "is_final": True,
                        "speech_final": i == 1,
                        "channel": {"alternatives": [{"transcript": part, "confidence": 0.98, "words": []}]},
                    }
                )
            )
        await ws.send(json.dumps({"type": "Metadata", "request_id": "x", "duration": 2.0, "channels": 1}))
        await ws.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
