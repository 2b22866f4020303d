"""Voice services of the agent pipeline (see ``vr3ai.agent.pipeline``).

* ``vad``       Silero VAD (ONNX, 8 kHz) + the speech start/stop state machine
* ``whisper``   offline STT: faster-whisper / Whisper tiny.en, short encoder window
* ``piper``     offline TTS client; ``piper_worker`` is the GPL-isolated worker process
* ``flite``     fallback TTS (Debian flite CLI)
* ``cloud``     Deepgram / OpenAI STT, OpenAI / ElevenLabs / Cartesia TTS (httpx, websockets)
* ``cache``     fixed-text audio cache; ``runtime`` the process-wide ``VoiceRuntime``
* ``base``      the STT/TTS base classes and the shared transcript filter; ``audio`` PCM helpers

Nothing here imports ``piper`` (GPL) into the platform process.
"""
