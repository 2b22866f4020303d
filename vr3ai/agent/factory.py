"""Build a call's agent from its workflow: ``build_agent(ctx) -> Agent``.

The workflow's ``settings`` (schema: ``vr3ai.workflows.definition.Settings``) choose:

* the responder (``settings.llm``; built by ``vr3ai.workflows.factory.build_responder``),
* STT: ``offline`` (Whisper tiny.en, shared process-wide), ``deepgram`` or ``openai``,
* TTS: ``offline`` (Piper if installed, else flite), ``piper``, ``flite``, ``openai``,
  ``elevenlabs`` or ``cartesia``,
* turn-taking: ``barge_in``, ``turn_end_silence_ms``, ``idle_timeout_s``, ``max_call_duration_s``.

Cloud engines get their key from ``ctx.secrets[<api_key_secret>]``. A missing key does not fail the
call: the offline engine is used instead and a warning event names the *secret name* (never a
value). Cloud TTS always has the offline engine as a per-sentence fallback, so a vendor outage
degrades the voice instead of silencing the agent.

Models and workers live in the process-wide :class:`VoiceRuntime` (re-exported here); building an
agent is cheap (no model loading), so call setup is dominated by the greeting cache lookup.
Base URLs of the cloud vendors can be redirected with ``VR3AI_DEEPGRAM_URL``,
``VR3AI_OPENAI_URL``, ``VR3AI_ELEVENLABS_URL`` and ``VR3AI_CARTESIA_URL`` (self-hosted compatible
servers, tests).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from vr3ai.agent.base import Agent, CallContext
from vr3ai.agent.pipeline import PipelineConfig, VoicePipeline
from vr3ai.agent.services.base import SpeechToText, TextToSpeech
from vr3ai.agent.services.cloud import CartesiaTTS, DeepgramSTT, ElevenLabsTTS, OpenAISTT, OpenAITTS
from vr3ai.agent.services.runtime import RuntimeConfig, VoiceRuntime
from vr3ai.core.outbound import OutboundPolicy
from vr3ai.core.secret_hosts import cloud_url
from vr3ai.workflows.definition import STTSettings, TTSSettings
from vr3ai.workflows.engine import WorkflowEngine, ensure_definition
from vr3ai.workflows.factory import build_responder

__all__ = [
    "RuntimeConfig",
    "VoiceRuntime",
    "build_agent",
    "prewarm_workflow",
    "start_runtime",
    "static_speech",
    "stop_runtime",
]

Note = tuple[Literal["info", "warning", "error"], str]


def _key(cfg: STTSettings | TTSSettings, secrets: dict[str, str], what: str, notes: list[Note]) -> str | None:
    name = cfg.api_key_secret
    if not name:
        notes.append(("warning", f"{what}: no api_key_secret configured; using the offline engine"))
        return None
    key = secrets.get(name)
    if not key:
        notes.append(("warning", f"{what}: organization secret '{name}' not found; using the offline engine"))
        return None
    return key


def build_stt(
    cfg: STTSettings,
    secrets: dict[str, str],
    runtime: VoiceRuntime,
    notes: list[Note],
    policy: OutboundPolicy | None = None,
) -> tuple[SpeechToText, bool]:
    """The STT engine for ``settings.stt``; the bool says whether the call owns (must close) it."""
    provider, model = cfg.provider, cfg.model
    # One table (vr3ai.core.secret_hosts) says where a provider's key goes, so the host a secret is
    # bound to is the host it is sent to (and the host the outbound policy checked on save).
    url = cloud_url("stt", provider)
    if provider == "deepgram" and url:
        key = _key(cfg, secrets, "STT deepgram", notes)
        if key:
            return DeepgramSTT(key, model=model or "nova-3", base_url=url, policy=policy), True
    elif provider == "openai" and url:
        key = _key(cfg, secrets, "STT openai", notes)
        if key:
            return OpenAISTT(key, model=model or "gpt-4o-mini-transcribe", base_url=url, policy=policy), True
    return runtime.stt, False


def build_tts(
    cfg: TTSSettings,
    secrets: dict[str, str],
    runtime: VoiceRuntime,
    notes: list[Note],
    policy: OutboundPolicy | None = None,
) -> tuple[TextToSpeech, TextToSpeech | None, bool]:
    """(engine, per-sentence fallback, call-owned) for ``settings.tts``."""
    provider, voice, model = cfg.provider, cfg.voice, cfg.model
    offline = runtime.local_tts()
    cloud: TextToSpeech | None = None
    url = cloud_url("tts", provider)
    if url is not None:
        key = _key(cfg, secrets, f"TTS {provider}", notes)
        if key and provider == "openai":
            cloud = OpenAITTS(
                key, voice=voice or "alloy", model=model or "gpt-4o-mini-tts", base_url=url, policy=policy
            )
        elif key and provider == "elevenlabs":
            cloud = ElevenLabsTTS(
                key,
                voice=voice or "21m00Tcm4TlvDq8ikWAM",
                model=model or "eleven_flash_v2_5",
                base_url=url,
                policy=policy,
            )
        elif key and provider == "cartesia":
            if not voice:
                notes.append(("warning", "TTS cartesia: settings.tts.voice (a voice id) is required; using offline"))
            else:
                cloud = CartesiaTTS(key, voice=voice, model=model or "sonic-2", base_url=url, policy=policy)
        if cloud is not None:
            return cloud, offline, True
        return offline, None if offline.engine == "flite" else runtime.fallback_tts(), False
    if provider == "flite":
        return runtime.local_tts("flite", voice), None, False
    if provider == "piper" and offline.engine != "piper":
        notes.append(("warning", "TTS piper: piper-tts is not installed; using flite"))
    return offline, None if offline.engine == "flite" else runtime.fallback_tts(), False


async def start_runtime(config: RuntimeConfig | None = None) -> VoiceRuntime:
    """App startup: create (or reuse) the process-wide runtime and preload models and workers, so
    the first call does not pay ~3-5 s of loading. Call from the app's lifespan."""
    runtime = VoiceRuntime.shared() if config is None else VoiceRuntime(config)
    if config is not None:
        VoiceRuntime.set_shared(runtime)
    await runtime.start()
    return runtime


async def stop_runtime() -> None:
    """App shutdown: stop the TTS workers and the STT pool of the process-wide runtime."""
    runtime = VoiceRuntime._shared
    if runtime is not None:
        await runtime.close()
        VoiceRuntime.set_shared(None)


def build_agent(ctx: CallContext, runtime: VoiceRuntime | None = None) -> Agent:
    """The agent for one call. Cheap: no model is loaded here (see :class:`VoiceRuntime`)."""
    runtime = runtime or VoiceRuntime.shared()
    defn = ensure_definition(ctx.workflow_definition)
    settings = defn.settings
    notes: list[Note] = []
    responder = build_responder(defn, ctx.variables, ctx.secrets, policy=ctx.outbound)
    stt, own_stt = build_stt(settings.stt, ctx.secrets, runtime, notes, policy=ctx.outbound)
    tts, fallback, own_tts = build_tts(settings.tts, ctx.secrets, runtime, notes, policy=ctx.outbound)
    owned: list[SpeechToText | TextToSpeech] = []
    if own_stt:
        owned.append(stt)
    if own_tts:
        owned.append(tts)
    config = PipelineConfig.from_settings(settings.model_dump())
    local_engine = tts.engine if not own_tts else (fallback.engine if fallback else None)
    return VoicePipeline(
        responder,
        stt,
        tts,
        config=config,
        cache=runtime.cache,
        fallback_tts=fallback,
        owned_services=owned,
        prepare=partial(runtime.ensure_started, local_engine),
        warm=runtime.warm,
        notes=notes,
    )


def static_speech(runtime: VoiceRuntime, definition: Any) -> tuple[TextToSpeech, list[str]] | None:
    """A workflow's static texts (greeting first) and the offline voice that says them; None for a
    cloud voice (it needs the organization's key and bills per character, so it is cached from
    what calls actually say) and for an invalid definition (saving it already reported why)."""
    try:
        defn = ensure_definition(definition)
    except Exception:
        return None
    cfg = defn.settings.tts
    if cfg.provider not in ("offline", "piper", "flite"):
        return None
    tts, _, _ = build_tts(cfg, {}, runtime, [])
    mode = "rules" if defn.settings.llm.provider == "rules" else "llm"
    return tts, WorkflowEngine(defn).static_texts(mode)


def prewarm_workflow(runtime: VoiceRuntime, definition: Any) -> int:
    """Queue a workflow's static texts for background synthesis into the cache, so its first call
    plays the greeting at once. Returns how many texts were queued."""
    speech = static_speech(runtime, definition)
    return runtime.warm(speech[1], speech[0]) if speech is not None else 0
