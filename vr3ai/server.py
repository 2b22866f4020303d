"""``vr3ai serve``: migrations, first-run organization, then one uvicorn process serving the API,
the dashboard, the media WebSocket (and optionally a second, TLS listener for ``wss://`` media)."""

from __future__ import annotations

import asyncio
import gc
import logging
import shlex
import signal
import sys
from typing import Any

import uvicorn

from vr3ai.app import create_app
from vr3ai.core.orgs import ensure_default_organization
from vr3ai.services import Services
from vr3ai.settings import Settings

log = logging.getLogger("vr3ai.server")


def uvicorn_config(app: Any, **kw: Any) -> uvicorn.Config:
    """How every VR3 AI HTTP listener is configured (``vr3ai serve`` and the test platforms).

    The media path is served by :class:`vr3ai.media.direct.MediaWebSocketProtocol`, our own
    protocol around ``websockets``' sans-I/O server (its 101 reply, "Connection: Upgrade" and no
    extensions, passes Asterisk's strict handshake check), given to uvicorn as its ``ws`` protocol
    class: same port, the media frames carried without ASGI. Access logs are off because URLs may
    carry credentials. WebSocket messages are capped at the media limit (the media socket is the
    only WebSocket we serve; the ASGI fallback path is capped by uvicorn's ``ws_max_size``)."""
    from vr3ai.media.direct import media_ws_protocol
    from vr3ai.media.server import MAX_MEDIA_MESSAGE_BYTES

    kw.setdefault("ws_max_size", MAX_MEDIA_MESSAGE_BYTES)
    return uvicorn.Config(
        app,
        ws=media_ws_protocol(app.state.services.media),
        log_config=None,
        access_log=False,
        **kw,
    )


def _cli(settings: Settings | None = None) -> str:
    """How this very installation's CLI is invoked (the venv is usually not on PATH), with the data
    folder when it was set (``VR3AI_DATA_DIR``, or given explicitly): scripts/run.sh's server runs in
    /var/lib/vr3ai/data, the operator's shell
    does not."""
    argv0 = sys.argv[0] if sys.argv else ""
    cli = argv0 if argv0.endswith("/vr3ai") else f"{sys.executable} -m vr3ai"
    if settings is not None and "data_dir" in settings.storage.model_fields_set:
        cli = f"VR3AI_DATA_DIR={shlex.quote(str(settings.storage.data_dir.resolve()))} {cli}"
    return cli


def asterisk_url_notice(settings: Settings) -> tuple[str, str | None]:
    """What start-up prints: where Asterisk must connect (the media ``uri`` of
    ``websocket_client.conf``), and a warning when that cannot work from another machine: the public
    URL is loopback (the default when ``VR3AI_PUBLIC_URL`` is unset), or we listen on loopback only."""
    from vr3ai.telephony.ari.snippets import is_loopback_url, media_ws_uri

    public = settings.effective_public_url()
    uri = media_ws_uri(public, tls_port=settings.media.tls_port if settings.media.tls_cert else 0)
    notice = (
        f"VR3 AI listens on {settings.server.host}:{settings.server.port}. Asterisk must reach it at {public}: "
        f"websocket_client.conf  uri = {uri}"
    )
    warning = None
    if is_loopback_url(public):
        warning = (
            f"the URL Asterisk must use ({public}) is a loopback address: only an Asterisk on this "
            "machine can reach it. Set VR3AI_PUBLIC_URL to the address your Asterisk reaches this "
            f"machine at, e.g. VR3AI_PUBLIC_URL={'https' if settings.server.tls_cert else 'http'}"
            f"://192.0.2.10:{settings.server.port}"
        )
    elif settings.server.host in {"localhost", "::1"} or settings.server.host.startswith("127."):
        warning = (
            f"listening on {settings.server.host} only, so Asterisk cannot reach {public}; "
            "set VR3AI_HOST=0.0.0.0 (the default)"
        )
    return notice, warning


async def _serve(settings: Settings) -> None:
    async def first_run(svc: Services) -> None:
        # Runs in the app's start-up, right after its migrations (so they run once per start).
        created = await ensure_default_organization(svc.db)
        if created:
            org_id, key = created
            print(
                "\nVR3 AI: created the default organization for this new data folder.\n"
                f"  organization id: {org_id}\n"
                f"  API key (shown once, store it now): {key}\n"
                f"  Dashboard sign-in: run  {_cli(settings)} user create {org_id} you@example.com  then open "
                f"{settings.effective_public_url()}/login\n",
                file=sys.stdout,
                flush=True,
            )

    try:
        main_tls = settings.main_listener_tls()  # before anything else: a wrong path is a typo to fix
    except ValueError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    app = create_app(settings, bootstrap=first_run)
    svc = app.state.services
    notice, warning = asterisk_url_notice(settings)
    print(notice, file=sys.stdout, flush=True)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    main = uvicorn.Server(
        uvicorn_config(app, host=settings.server.host, port=settings.server.port, lifespan="on", **main_tls)
    )
    servers = [main]
    if settings.media.tls_port and settings.media.tls_cert and settings.media.tls_key:
        tls = uvicorn.Server(
            uvicorn_config(
                app,
                host=settings.server.host,
                port=settings.media.tls_port,
                lifespan="off",
                ssl_certfile=settings.media.tls_cert,
                ssl_keyfile=settings.media.tls_key,
            )
        )
        servers.append(tls)

    # Our own SIGTERM/SIGINT handling: end calls cleanly (ARI hangup, runs closed with a reason)
    # BEFORE uvicorn closes the media WebSockets, which would otherwise look like a network failure.
    loop = asyncio.get_running_loop()
    stopping = False
    shutdown_tasks: list[asyncio.Task[None]] = []

    async def graceful() -> None:
        if svc.telephony is not None:
            log.info("shutting down: ending live calls", extra={"grace_s": settings.server.shutdown_grace_s})
            try:
                await svc.telephony.drain(settings.server.shutdown_grace_s)
            except Exception:
                log.exception("graceful telephony stop failed")
        for s in servers:
            s.should_exit = True

    def on_signal() -> None:
        nonlocal stopping
        if stopping:
            for s in servers:
                s.force_exit = True
            return
        stopping = True
        shutdown_tasks.append(loop.create_task(graceful()))

    for s in servers:
        s.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("listening", extra={"url": settings.effective_public_url()})
    tasks = [asyncio.create_task(s.serve()) for s in servers]

    async def freeze_startup_objects() -> None:
        # Everything allocated at start-up (models, modules, the app) lives for the whole process.
        # Moving it out of the collector's reach turns a 135-260 ms full collection, which stalls
        # every call's audio at once, into a few milliseconds (bench/capacity.py --gc-freeze).
        while not main.started and not tasks[0].done():  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        gc.collect()
        gc.freeze()

    shutdown_tasks.append(asyncio.create_task(freeze_startup_objects()))
    # When the main server stops (SIGTERM/SIGINT), stop the TLS media listener with it.
    await tasks[0]
    for s in servers[1:]:
        s.should_exit = True
    await asyncio.gather(*tasks[1:])


def serve(settings: Settings) -> int:
    # uvloop when available (uvicorn[standard] brings it): at 100+ calls the media path is bound by
    # event-loop overhead, and uvloop roughly halves it (bench/media_pacing.py).
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] is a dependency
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(settings))
    return 0
