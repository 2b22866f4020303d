"""A second Asterisk from the lab's chroot keeps the harness's discipline: it needs the lab's lock,
never touches the lab's process, sockets or CLI, and leaves nothing behind when stopped."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import AsteriskLab, AsteriskLabError
from tests.harness.asterisk import SecondAsterisk

pytestmark = pytest.mark.asterisk


async def test_second_instance_is_separate_and_cleans_up(lab: AsteriskLab) -> None:
    lab_pid, lab_socks = lab.pid, set(lab.sockets())
    phone = lab.second("phone", role="phone")
    pbx = lab.second("pbx2")
    try:
        await asyncio.to_thread(phone.start)
        await asyncio.to_thread(pbx.start)
        assert len({lab_pid, phone.pid, pbx.pid}) == 3
        # Each answers its own CLI and ARI; the lab's sockets are untouched and not shared.
        assert f"{phone.sip_host}:{phone.sip_port}" in phone.rx("pjsip show transports")
        assert f"127.0.0.1:{lab.sip_port}" not in phone.rx("pjsip show transports")
        assert set(lab.sockets()) == lab_socks
        assert not set(phone.sockets()) & lab_socks and not set(pbx.sockets()) & lab_socks
        assert (await pbx.ari("GET", "/asterisk/info")).status_code == 200
        assert pbx.ari_url != lab.ari_url
        # The lab's own view of "its" daemon is still only its own process.
        assert lab._daemon_pids() == [lab_pid]
        assert set(lab._daemon_pids(all_instances=True)) == {lab_pid, phone.pid, pbx.pid}
    finally:
        await asyncio.to_thread(phone.stop)
        await asyncio.to_thread(pbx.stop)
    assert lab.is_running() and lab.pid == lab_pid
    assert lab._daemon_pids(all_instances=True) == [lab_pid]
    assert not phone._ctl_path.exists() or not phone.is_running()


async def test_second_instance_needs_the_labs_lock() -> None:
    lab = AsteriskLab()  # never started: holds no lock
    second = SecondAsterisk(lab, "orphan", role="pbx", rtp_ports=(10800, 10898))
    with pytest.raises(AsteriskLabError, match="lock"):
        second.start()
    assert second.pid is None
