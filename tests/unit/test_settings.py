"""The one settings model (vr3ai/settings.py): every VR3AI_* variable is read there, the README's
table is the model's, explicit construction ignores the environment, bad values name the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vr3ai.agent.services.runtime import RuntimeConfig
from vr3ai.core.secret_hosts import cloud_url
from vr3ai.settings import README_BEGIN, README_END, Settings, readme_table

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_VARIABLES = {"VR3AI_CACHE"}
"""Read by scripts/run.sh and scripts/test.sh (where the venv lives), not by the server."""


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_table_is_the_model() -> None:
    """A field missing from the README, or a row the model does not have, fails here; the fix is
    ``python -m vr3ai.settings`` pasted between the markers."""
    text = _readme()
    assert README_BEGIN in text and README_END in text, "README lost its settings table markers"
    block = text[text.index(README_BEGIN) : text.index(README_END) + len(README_END)]
    assert block == readme_table(), "README settings table differs from vr3ai/settings.py: run python -m vr3ai.settings"


def test_readme_names_only_real_variables() -> None:
    known = set(Settings.variables()) | SCRIPT_VARIABLES
    named = set(re.findall(r"VR3AI_[A-Z0-9_]*[A-Z0-9]", _readme()))
    # ``VR3AI_MEDIA_TLS_*`` names a family: it must be a prefix of real variables.
    families = {m for m in re.findall(r"(VR3AI_[A-Z0-9_]+_)\*", _readme())}
    assert all(any(v.startswith(f) for v in known) for f in families), families
    unknown = {n for n in named if n not in known and not any(n + "_" == f for f in families)}
    assert not unknown, f"README names variables the settings model does not have: {sorted(unknown)}"
    missing = set(Settings.variables()) - named
    assert not missing, f"README does not describe {sorted(missing)}"


def test_no_module_reads_a_variable_itself() -> None:
    """Every VR3AI_* variable is read in vr3ai/settings.py, nowhere else."""
    offenders = []
    for path in (ROOT / "vr3ai").rglob("*.py"):
        if path.name == "settings.py" and path.parent.name == "vr3ai":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(environ|getenv)\b.*VR3AI_", line) or re.search(r"environ\.get\(f?\"VR3AI", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_explicit_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_PORT", "9123")
    monkeypatch.setenv("VR3AI_DATA_DIR", "/somewhere/else")
    monkeypatch.setenv("VR3AI_MEDIA_TICK_READS_FROM", "3")
    monkeypatch.setenv("VR3AI_VOICE", "0")
    s = Settings(host="127.0.0.1", media_tls_port=8443)
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.storage.data_dir == Path("./data")
    assert (s.media.tls_port, s.media.tick_reads_from) == (8443, 16)
    assert s.voice.voice is True
    assert Settings().server.port == 8000


def test_from_env_reads_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_PORT", "9123")
    monkeypatch.setenv("VR3AI_DATA_DIR", "/srv/vr3ai")
    monkeypatch.setenv("VR3AI_MEDIA_RING_SENDS", "0")
    monkeypatch.setenv("VR3AI_STT_WORKERS", "3")
    monkeypatch.setenv("VR3AI_DEEPGRAM_URL", "ws://127.0.0.1:9/dg")
    monkeypatch.setenv("VR3AI_PUBLIC_URL", "")  # empty means unset
    monkeypatch.setenv("VR3AI_COOKIE_SECURE", "")
    s = Settings.from_env()
    assert s.server.port == 9123 and s.server.public_url == "" and s.server.cookie_secure is None
    assert s.storage.data_dir == Path("/srv/vr3ai")
    assert s.media.ring_sends is False
    assert s.voice.stt_workers == 3
    assert s.vendors.deepgram_url == "ws://127.0.0.1:9/dg"
    assert cloud_url("stt", "deepgram") == "ws://127.0.0.1:9/dg"
    assert cloud_url("tts", "openai") == "https://api.openai.com/v1"
    assert cloud_url("stt", "whisper") is None


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_MEDIA_TLS_PORT", "not-a-port")
    monkeypatch.setenv("VR3AI_CALL_STARTS_BURST", "-1")
    with pytest.raises(ValueError, match="VR3AI_MEDIA_TLS_PORT") as e:
        Settings.from_env()
    assert "VR3AI_CALL_STARTS_BURST" in str(e.value)


def test_keywords_are_the_variable_names() -> None:
    s = Settings(voice=False, media_tick_reads_from=0, stt_threads=4, openai_url="http://127.0.0.1:1/v1")
    assert (s.voice.voice, s.media.tick_reads_from, s.voice.stt_threads) == (False, 0, 4)
    assert s.vendors.openai_url == "http://127.0.0.1:1/v1"
    with pytest.raises(ValueError, match="no variable VR3AI_PROT"):
        Settings(prot=8000)
    with pytest.raises(ValueError):
        Settings(port="eighty")


def test_runtime_config_takes_the_voice_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VR3AI_TTS_ENGINE", "flite")
    monkeypatch.setenv("VR3AI_STT_THREADS", "3")
    monkeypatch.delenv("VR3AI_TTS_CACHE_DIR", raising=False)
    monkeypatch.delenv("VR3AI_DATA_DIR", raising=False)
    env = RuntimeConfig()
    assert (env.tts_engine, env.stt_threads, env.cache_dir, env.warm_queue_max) == ("flite", 3, None, 500)
    monkeypatch.setenv("VR3AI_DATA_DIR", str(tmp_path))
    assert RuntimeConfig().cache_dir == tmp_path / "tts-cache"
    given = RuntimeConfig.from_settings(Settings(data_dir=tmp_path, tts_engine="flite", tts_cache_max_mb=7))
    assert (given.cache_dir, given.cache_max_mb, given.stt_threads) == (tmp_path / "tts-cache", 7, 2)
