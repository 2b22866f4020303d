"""The real-Asterisk harness proves itself, without the platform.

Every call here ends in a harness-only context ([harness-echo], [harness-silent]) or in a
harness-owned probe Stasis app; nothing subscribes to the platform's app `vr3ai`.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.harness import MEDIA_PATH, PLATFORM_APP, AsteriskLab, audio

pytestmark = pytest.mark.asterisk

SPEECH = "Hello, I would like to book a table for two people tonight."


@pytest.fixture
def lab(clean_asterisk_lab: AsteriskLab) -> AsteriskLab:
    return clean_asterisk_lab


@pytest.fixture(scope="module")
def speech_wav() -> Any:
    return audio.synth_speech(SPEECH)


async def _no_leftovers(lab: AsteriskLab) -> None:
    assert await lab.wait_no_channels(5) == []
    assert await lab.ari_bridges() == []
    apps = [a["name"] for a in (await lab.ari("GET", "/applications")).json()]
    assert PLATFORM_APP not in apps, "the harness must never register the platform's Stasis app"


# ---------------------------------------------------------------------------- boot / config


async def test_asterisk_boots_and_ari_answers(lab: AsteriskLab) -> None:
    assert lab.boot_s is not None and lab.boot_s < 10
    assert lab.ari_ready_s is not None and lab.ari_ready_s >= lab.boot_s
    info = (await lab.ari("GET", "/asterisk/info")).json()
    assert info["system"]["version"].startswith("22.")
    for module in (
        "chan_websocket.so",
        "res_websocket_client.so",
        "res_ari.so",
        "res_pjsip.so",
        "app_mixmonitor.so",
        "res_timing_timerfd.so",
    ):
        assert lab.module_status(module) == "Running", module


async def test_ari_users(lab: AsteriskLab) -> None:
    for user in ("vr3ai", "vr3ai2", "intruder"):
        async with lab.ari_client(user) as c:
            assert (await c.get("/asterisk/info")).status_code == 200, user
    async with lab.ari_client("vr3ai", "wrong") as c:
        assert (await c.get("/asterisk/info")).status_code == 401


def test_listens_only_on_loopback(lab: AsteriskLab) -> None:
    socks = lab.sockets()
    assert ("tcp", "127.0.0.1", lab.ari_port) in socks
    assert ("udp", "127.0.0.1", lab.sip_port) in socks
    for proto, addr, port in socks:
        if proto.startswith("tcp"):
            assert addr == "127.0.0.1", (proto, addr, port)
        elif addr not in ("127.0.0.1", "::1"):
            # pjsip's DNS resolver keeps two unconnected client sockets on ephemeral ports (it
            # creates them whatever resolv.conf says); nothing else may be bound to a wildcard.
            assert port >= 32768, (proto, addr, port)


# ---------------------------------------------------------------------------- Local caller


async def test_local_caller_echo_recording(lab: AsteriskLab, speech_wav: Any) -> None:
    """The caller plays a WAV into an Echo(); its heard track has the call's length and holds the
    WAV at the right offset."""
    pcm = audio.read_wav(speech_wav)[0]
    await lab.warm_up()
    h = await lab.call("1234", wav=speech_wav, wav_after_s=0.5, hold_s=5.0, context="harness-echo")
    assert h.originate_ms < 200
    setup = await h.wait_answered()
    assert setup < 1.0
    duration = await h.wait_hangup()
    assert 4.9 < duration < 5.6
    heard = await h.recording()
    assert abs(len(heard) / audio.RATE - 5.0) < 0.5  # not time-compressed (margin: CPU load)
    lag, corr = audio.find_lag(pcm, heard)
    # On an idle machine corr is 0.9999; under heavy CPU load MixMonitor pads late frames with
    # silence, which costs correlation but not the position.
    assert corr > 0.6
    assert 0.5 <= lag < 0.65
    said = await h.recording("said")
    assert audio.find_lag(pcm, said)[1] > 0.6
    await _no_leftovers(lab)


async def test_local_caller_silent_far_end_recording_keeps_real_time(lab: AsteriskLab, speech_wav: Any) -> None:
    """The far end sends no frames at all; the caller's silence generator still keeps the heard
    track in real time (MixMonitor would otherwise compress it to the frames that arrived)."""
    h = await lab.call("1234", wav=speech_wav, hold_s=5.0, context="harness-silent")
    heard = await h.recording()
    # Compressed would mean ~0 s here. The margin is for CPU contention: Asterisk's generator
    # timer loses ticks on a loaded 2-CPU box (seen: 4.76 s of 5 s with browsers tests running).
    assert abs(len(heard) / audio.RATE - 5.0) < 0.5
    assert audio.segments(heard) == []
    said = await h.recording("said")
    segs = audio.segments(said)
    assert segs and segs[0].start_s < 0.3


async def test_caller_hangup_and_handle_api(lab: AsteriskLab) -> None:
    h = await lab.call("1234", hold_s=30.0, context="harness-echo")
    await h.wait_answered()
    assert await h.is_up()
    assert h.callee_channel_id == f"{h.channel_id}-in"
    await asyncio.sleep(0.6)
    t0 = time.monotonic()
    await h.hangup()
    await h.wait_hangup(5)
    assert time.monotonic() - t0 < 1.0
    assert 0.4 < len(await h.recording()) / audio.RATE < 0.9
    await _no_leftovers(lab)


async def test_stasis_app_override_and_dtmf(lab: AsteriskLab) -> None:
    """STASIS_APP set on the originate reaches [from-external] through the Local channel (its
    variables are copied to the ;2 half), so the call lands in another app; DTMF from the
    caller context arrives there."""
    async with lab.event_probe() as probe:
        h = await lab.call(
            "8000",
            stasis_app=probe.app,
            hold_s=5.0,
            dtmf="12#",
            dtmf_after_s=0.3,
            caller_id='"Alice Caller" <15551230001>',
        )
        start = (await probe.wait_for("StasisStart", h.callee_channel_id))[0]
        ch = start["channel"]
        assert ch["name"].startswith("Local/8000@from-external-") and ch["name"].endswith(";2")
        assert ch["dialplan"]["context"] == "from-external" and ch["dialplan"]["app_data"] == probe.app
        assert ch["caller"]["number"] == "15551230001" and ch["state"] == "Ring"
        await lab.ari("POST", f"/channels/{h.callee_channel_id}/answer")
        dtmf = await probe.wait_for("ChannelDtmfReceived", h.callee_channel_id, count=3, timeout_s=5)
        assert [e["digit"] for e in dtmf] == ["1", "2", "#"]
        await h.hangup()
        await probe.wait_for("StasisEnd", h.callee_channel_id)
    await _no_leftovers(lab)


# ---------------------------------------------------------------------------- SIP loopback


async def test_sip_loopback_call_reaches_context(lab: AsteriskLab, speech_wav: Any) -> None:
    pcm = audio.read_wav(speech_wav)[0]
    h = await lab.sip_call("4321", wav=speech_wav, wav_after_s=0.3, hold_s=4.5, context="harness-echo")
    assert await h.wait_answered() < 1.0
    callee_id = await h.wait_callee()
    callee = (await lab.ari("GET", f"/channels/{callee_id}")).json()
    assert callee["name"].startswith("PJSIP/6001-")
    assert callee["dialplan"]["context"] == "harness-echo" and callee["dialplan"]["exten"] == "4321"
    # RTP of this call is bound to loopback as well
    rtp = [s for s in lab.sockets() if s[0] == "udp" and lab.rtp_ports[0] <= s[2] <= lab.rtp_ports[1]]
    assert rtp and all(addr == "127.0.0.1" for _, addr, _ in rtp)
    heard = await h.recording()
    assert abs(len(heard) / audio.RATE - 4.5) < 0.5
    # The echo crossed RTP twice; corr is ~0.9999 idle, lower when a loaded CPU delays packets.
    lag, corr = audio.find_lag(pcm, heard)
    assert 0.3 <= lag < 0.5 and corr > 0.4
    segs = audio.segments(heard)
    assert segs and 0.3 <= segs[0].start_s < 0.8
    await _no_leftovers(lab)


async def test_sip_call_into_stasis(lab: AsteriskLab) -> None:
    async with lab.event_probe() as probe:
        h = await lab.sip_call("8000", stasis_app=probe.app, hold_s=5.0, dtmf="7#", dtmf_after_s=0.2)
        start = (await probe.wait_for("StasisStart"))[0]
        ch = start["channel"]
        assert ch["name"].startswith("PJSIP/6001-") and ch["protocol_id"]
        assert ch["dialplan"]["context"] == "from-external" and ch["dialplan"]["exten"] == "8000"
        assert ch["caller"]["number"] == "15551239999"
        assert await h.wait_callee() == ch["id"]
        await lab.ari("POST", f"/channels/{ch['id']}/answer")
        dtmf = await probe.wait_for("ChannelDtmfReceived", ch["id"], count=2)  # RFC 4733 over RTP
        assert [e["digit"] for e in dtmf] == ["7", "#"]
        await lab.ari("DELETE", f"/channels/{ch['id']}")
        await h.wait_hangup(5)
    await _no_leftovers(lab)


# ---------------------------------------------------------------------------- WebSocketCaller


async def test_ws_caller_hears_itself_through_echo(lab: AsteriskLab) -> None:
    pcm = audio.speech_pcm("Testing one two three.")
    await lab.warm_up()
    async with lab.ws_caller("5555", context="harness-echo") as caller:
        assert caller.originate_ms is not None and caller.originate_ms < 100
        assert caller.connected_at is not None and caller.originated_at is not None
        assert caller.connected_at - caller.originated_at < 0.5
        fields = caller.media_start_fields
        assert fields["channel_id"] == caller.channel_id and fields["format"] == "ulaw"
        assert fields["optimal_frame_size"] == "160"
        await asyncio.sleep(0.3)
        played = caller.play(pcm)
        speech_end = await caller.until_played()
        assert played.started_at is not None and played.speech_end_at == speech_end
        assert abs(played.n_frames * audio.FRAME_S - (played.ended_at - played.started_at) - audio.FRAME_S) < 0.1
        await asyncio.sleep(0.3)

        # Echo() sends back the very u-law bytes: find each frame of the utterance in what came back
        sent = audio.lin2ulaw(np.concatenate([pcm, np.zeros((-len(pcm)) % 160, np.int16)]))
        assert sent in caller.heard_bytes()
        k = int(np.argmax(audio.frame_dbfs(pcm) > -45))  # first frame with speech
        frame = sent[k * 160 : (k + 1) * 160]
        arrival = next(t for t, f in caller.frames if f == frame)
        rtt_ms = (arrival - played.sent_times[k]) * 1000
        assert 0 <= rtt_ms < 200, rtt_ms  # idle machine: 1-25 ms (chan_websocket's 20 ms timer phase)

        # the aligned timeline puts the echo where it happened
        lag, corr = audio.find_lag(pcm, caller.heard_pcm())
        assert corr > 0.8
        assert abs(lag - (played.started_at - caller.connected_at)) < 0.15

        first = caller.first_audio_after(speech_end - 0.5)
        assert first is not None
        st = caller.stats()
        assert st["stalls"] < 3
        assert st["send_gap_ms"]["p50"] == pytest.approx(20, abs=1)
        assert st["recv_gap_ms"]["p50"] == pytest.approx(20, abs=1)
    assert caller.close_code == 1000
    await _no_leftovers(lab)


async def test_ws_callers_concurrent_and_platform_hangup(lab: AsteriskLab) -> None:
    """Several callers share the harness' server; a far-side hangup closes the caller's socket."""
    async with lab.event_probe() as probe:
        callers = [lab.ws_caller("8000", stasis_app=probe.app) for _ in range(3)]
        await asyncio.gather(*(c.start() for c in callers))
        for c in callers:
            start = (await probe.wait_for("StasisStart", c.channel_id))[0]
            assert start["channel"]["name"].startswith("WebSocket/caller_ws/")
            assert start["channel"]["state"] == "Up"
        await lab.ari("DELETE", f"/channels/{callers[0].channel_id}")
        await callers[0].wait_hangup(5)
        assert all(c.is_connected for c in callers[1:])
        for c in callers:
            await c.close()
    await _no_leftovers(lab)


# ---------------------------------------------------------------------------- websocket_client


async def test_websocket_client_sections_follow_configured_ports(lab: AsteriskLab) -> None:
    """vr3ai / vr3ai_auth / vr3ai_tls / vr3ai_noauth dial whatever ports the test sets, all but
    vr3ai_noauth with the harness' media credentials; vr3ai_down fails fast."""
    seen: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(
            {
                "path": ws.request.path,
                "subprotocol": ws.subprotocol,
                "auth": ws.request.headers.get("Authorization"),
                "first": await ws.recv(),
            }
        )
        await ws.wait_closed()

    sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sslctx.load_cert_chain(lab.server_cert_path, lab.server_key_path)
    common: dict[str, Any] = {"subprotocols": ["media"], "ping_interval": None, "max_size": None}
    async with (
        serve(handler, "127.0.0.1", 0, **common) as plain,
        serve(handler, "127.0.0.1", 0, ssl=sslctx, **common) as tls,
        lab.event_probe() as probe,
    ):
        plain_port = plain.sockets[0].getsockname()[1]
        tls_port = tls.sockets[0].getsockname()[1]
        await asyncio.to_thread(lab.set_websocket_clients, media_port=plain_port, tls_media_port=tls_port)
        assert f"ws://127.0.0.1:{plain_port}{MEDIA_PATH}" == lab.media_url

        def params(chan: str, host: str) -> dict[str, str]:
            return {
                "app": probe.app,
                "channelId": chan,
                "external_host": host,
                "transport": "websocket",
                "encapsulation": "none",
                "format": "ulaw",
                "connection_type": "client",
                "direction": "both",
            }

        for n, host in enumerate(("vr3ai", "vr3ai_auth", "vr3ai_tls", "vr3ai_noauth")):
            chan = f"hmedia-{host}-{time.monotonic_ns()}"
            await lab.ari("POST", "/channels/externalMedia", params=params(chan, host))
            # the media channel's StasisStart is the "media connected" signal (it follows the handshake)
            await probe.wait_for("StasisStart", chan)
            for _ in range(100):
                if len(seen) > n:
                    break
                await asyncio.sleep(0.02)
            assert len(seen) == n + 1, f"{host}: Asterisk did not connect"
            got = seen[n]
            assert got["path"] == MEDIA_PATH and got["subprotocol"] == "media"
            assert got["first"].startswith(f"MEDIA_START connection_id:{host} ")
            assert f"channel_id:{chan}" in got["first"]
            if host == "vr3ai_noauth":
                assert got["auth"] is None
            else:
                assert got["auth"] == "Basic " + base64.b64encode(b"vr3ai-media:media-secret").decode()
            await lab.ari("DELETE", f"/channels/{chan}")

        chan = f"hmedia-down-{time.monotonic_ns()}"
        t0 = time.monotonic()
        await lab.ari("POST", "/channels/externalMedia", params=params(chan, "vr3ai_down"))
        destroyed = (await probe.wait_for("ChannelDestroyed", chan))[0]
        assert destroyed["cause"] == 3
        assert time.monotonic() - t0 < 2.0
        assert not probe.find("StasisStart", chan)
        assert len(seen) == 4
    await asyncio.to_thread(lab.reset_websocket_clients)
    assert lab.media_port != plain_port and lab.tls_media_port != tls_port
    await _no_leftovers(lab)


# ---------------------------------------------------------------------------- outbound callees


async def test_outbound_sim_callees(lab: AsteriskLab) -> None:
    async with lab.event_probe() as probe:

        async def originate(ext: str, answer_timeout_s: int = 10) -> str:
            cid = f"hout-{ext}-{time.monotonic_ns()}"
            await lab.ari(
                "POST",
                "/channels",
                params={
                    "endpoint": f"Local/{ext}@outbound-sim",
                    "app": probe.app,
                    "appArgs": "outbound",
                    "timeout": str(answer_timeout_s),
                    "channelId": cid,
                    "callerId": '"VR3AI Bot" <15559870000>',
                },
            )
            return cid

        def dialstatus(cid: str) -> list[str]:
            return [e["dialstatus"] for e in probe.find("Dial") if e["peer"]["id"] == cid]

        # answers (after ringing) and plays hello-world, recording what it hears
        cid = await originate("6001")
        start = (await probe.wait_for("StasisStart", cid))[0]
        assert start["channel"]["state"] == "Up" and start["args"] == ["outbound"]
        await asyncio.sleep(2.0)
        await lab.ari("DELETE", f"/channels/{cid}")
        await probe.wait_for("ChannelDestroyed", cid)
        recs = lab.callee_recordings("6001", "said")
        assert recs
        said = audio.read_wav(await _final(recs[-1]))[0]
        segs = audio.segments(said)
        assert segs and 0.4 < segs[0].start_s < 0.9  # hello-world after 0.5 s

        # silent answer
        cid = await originate("5001")
        await probe.wait_for("StasisStart", cid)
        await lab.ari("DELETE", f"/channels/{cid}")

        for ext, cause, status in (("7001", 17, "BUSY"), ("4001", 34, "CONGESTION")):
            cid = await originate(ext)
            destroyed = (await probe.wait_for("ChannelDestroyed", cid))[0]
            assert destroyed["cause"] == cause, ext
            assert status in dialstatus(cid), (ext, dialstatus(cid))
            assert not probe.find("StasisStart", cid)

        cid = await originate("8001", answer_timeout_s=1)
        destroyed = (await probe.wait_for("ChannelDestroyed", cid, timeout_s=4))[0]
        assert destroyed["cause"] == 19
        assert not probe.find("StasisStart", cid)

        # [callee-silent]: answers, sends nothing for EXTEN seconds, hangs up by itself
        cid = f"hout-silent-{time.monotonic_ns()}"
        t0 = time.monotonic()
        await lab.ari(
            "POST",
            "/channels",
            params={"endpoint": "Local/1@callee-silent", "app": probe.app, "timeout": "5", "channelId": cid},
        )
        await probe.wait_for("StasisStart", cid)
        await probe.wait_for("ChannelDestroyed", cid, timeout_s=4)
        assert 0.9 < time.monotonic() - t0 < 2.0
    await _no_leftovers(lab)


async def _final(path: Any) -> Any:
    from tests.harness.asterisk import wait_wav_final

    return await wait_wav_final(path)


async def test_set_callee_wav_and_hold(lab: AsteriskLab, tmp_path: Any) -> None:
    tone = audio.tone_wav(tmp_path / "tone.wav", 440, 0.8)
    lab.set_callee("6002", wav=tone, hold_s=2.0)
    async with lab.event_probe() as probe:
        cid = f"hout-6002-{time.monotonic_ns()}"
        t0 = time.monotonic()
        await lab.ari(
            "POST",
            "/channels",
            params={"endpoint": "Local/6002@outbound-sim", "app": probe.app, "timeout": "5", "channelId": cid},
        )
        await probe.wait_for("StasisStart", cid)
        await probe.wait_for("ChannelDestroyed", cid, timeout_s=5)
        assert 2.0 < time.monotonic() - t0 < 3.0  # the callee hung up after its hold time
    said = audio.read_wav(await _final(lab.callee_recordings("6002", "said")[-1]))[0]
    segs = audio.segments(said)
    assert len(segs) == 1 and abs(segs[0].duration_s - 0.8) < 0.1
    start = int(segs[0].start_s * audio.RATE)
    assert audio.dominant_freq(said[start : start + 4000]) == pytest.approx(440, abs=10)
    lab.set_callee("6002")


# ---------------------------------------------------------------------------- lifecycle


def test_restart_replaces_a_leftover_instance(lab: AsteriskLab) -> None:
    """start() finds an Asterisk it did not start (a crashed session's) and replaces it."""
    orphan = lab._proc
    assert orphan is not None
    lab._proc = None  # forget it, as a new session would
    t0 = time.monotonic()
    lab.start()
    assert orphan.wait(timeout=10) is not None
    assert lab.pid is not None and lab.pid != orphan.pid
    assert lab.is_running()
    assert time.monotonic() - t0 < 15
    lab.restart()
    assert lab.is_running() and lab.module_status("chan_websocket.so") == "Running"


def test_audio_helpers(tmp_path: Any) -> None:
    wav = audio.synth_speech("one two three", tmp_path / "s.wav")
    pcm, rate = audio.read_wav(wav)
    assert rate == 8000 and 0.5 < len(pcm) / rate < 3
    wide = audio.write_wav(tmp_path / "16k.wav", audio.resample(pcm, 8000, 16000), rate=16000)
    narrow = audio.ensure_8k_wav(wide, tmp_path / "back.wav")
    back8, rate8 = audio.read_wav(narrow)
    assert rate8 == 8000 and abs(len(back8) - len(pcm)) <= 2
    x = audio.concat(audio.silence(0.5), audio.tone(1000, 0.4), audio.silence(0.5), audio.tone(500, 0.3))
    segs = audio.segments(x)
    assert [(round(s.start_s, 2), round(s.end_s, 2)) for s in segs] == [(0.5, 0.9), (1.4, 1.7)]
    assert audio.tone_ratio(audio.tone(1000, 0.1), 1000) > 0.9
    u = audio.lin2ulaw(np.array([0, 1000, -1000, 32767, -32768], dtype=np.int16))
    assert u[0] == 0xFF and u[3] == 0x80 and u[4] == 0x00
    back = audio.ulaw2lin(u)
    assert back[0] == 0 and abs(int(back[1]) - 1000) < 40 and abs(int(back[2]) + 1000) < 40
