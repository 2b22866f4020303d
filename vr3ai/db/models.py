"""The relational model. Every row that belongs to a customer carries ``organization_id``.

IDs are random UUID strings: they are shown in URLs and ARI ``appArgs``, must not be guessable
across organizations, and let the call flow mint a run id before the row exists.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    # SQLAlchemy reads this as a class attribute; it is never mutated.
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    max_concurrent_calls: Mapped[int] = mapped_column(Integer, default=5)
    minutes_per_month: Mapped[int | None] = mapped_column(Integer, nullable=True, default=1000)
    # Calls holding a slot right now. Changed only by single conditional UPDATEs (core.quota), which
    # is what makes reservations atomic on SQLite and PostgreSQL alike.
    active_calls: Mapped[int] = mapped_column(Integer, default=0)
    # Per-tenant limits (vr3ai.core.limits): what one organization may store, so that one tenant
    # cannot fill the database, the disk or the shared TTS worker for everyone. Set by the operator
    # (``vr3ai org set-limits``), never by the tenant; the server defaults fill existing rows.
    max_telephony_configurations: Mapped[int] = mapped_column(Integer, default=10, server_default=text("10"))
    max_workflows: Mapped[int] = mapped_column(Integer, default=100, server_default=text("100"))
    max_phone_numbers: Mapped[int] = mapped_column(Integer, default=200, server_default=text("200"))
    max_secrets: Mapped[int] = mapped_column(Integer, default=50, server_default=text("50"))
    max_definition_bytes: Mapped[int] = mapped_column(Integer, default=262144, server_default=text("262144"))
    max_recording_mb: Mapped[int] = mapped_column(Integer, default=2048, server_default=text("2048"))
    """Disk space the organization's call recordings may take; at the limit calls are still
    answered but not recorded (the run says why)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OrganizationUsage(Base):
    """Billed seconds per organization and calendar month (UTC), e.g. ``2026-11``."""

    __tablename__ = "organization_usage"

    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    seconds_used: Mapped[int] = mapped_column(Integer, default=0)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="default")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RevokedSession(Base):
    """Dashboard sessions ended by "Sign out" before their cookie expires. Kept in the database so a
    restart does not bring a signed-out cookie back to life; rows past ``expires_at`` (when the
    cookie's signature would have expired anyway) are deleted on the next sign-out."""

    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class OrganizationSecret(Base):
    """Named secrets (e.g. an LLM API key) that workflows refer to by name."""

    __tablename__ = "organization_secrets"
    __table_args__ = (UniqueConstraint("organization_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    value_enc: Mapped[str] = mapped_column(Text)
    allowed_hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The hosts this value may be sent to (``host`` or ``host:port``); empty = not bound yet, the
    first workflow saved (or call placed) with it binds it (see ``vr3ai.core.secret_hosts``)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Workflow(Base):
    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TelephonyConfiguration(Base):
    __tablename__ = "telephony_configurations"
    __table_args__ = (
        # Two configurations sharing one Stasis app on one Asterisk silently steal each other's calls.
        UniqueConstraint("provider", "endpoint_key", "stasis_app_name", name="uq_telephony_app_per_endpoint"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(32), default="ari")
    ari_endpoint_url: Mapped[str] = mapped_column(String(500))
    endpoint_key: Mapped[str] = mapped_column(String(500))
    """``ari_endpoint_url`` normalised (scheme, lower-case host, explicit port) for the uniqueness rule."""
    stasis_app_name: Mapped[str] = mapped_column(String(200))
    app_password_enc: Mapped[str] = mapped_column(Text)
    websocket_client_name: Mapped[str] = mapped_column(String(200))
    from_extensions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    dial_template: Mapped[str] = mapped_column(String(200), default="PJSIP/{to}")
    media_username: Mapped[str | None] = mapped_column(String(200), nullable=True)
    media_password_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"
    __table_args__ = (UniqueConstraint("telephony_configuration_id", "address", name="uq_number_per_config"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    telephony_configuration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("telephony_configurations.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(100))
    inbound_workflow_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        Index("ix_runs_org_created", "organization_id", "created_at"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    workflow_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True, index=True
    )
    telephony_configuration_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("telephony_configurations.id", ondelete="SET NULL"), nullable=True, index=True
    )
    direction: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="initialized")
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    transcript: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[list[Any]] = mapped_column(JSON, default=list)
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    call_id: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    recording_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    recording_bytes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Size of the recording file, summed per organization for its recording quota."""
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    billed_seconds: Mapped[int] = mapped_column(Integer, default=0)
    # True while this run holds one of its organization's concurrent-call slots. Flipped to False by
    # exactly one conditional UPDATE, which is what makes release-and-bill happen exactly once.
    slot_held: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


RUN_STATUSES = ("initialized", "running", "completed", "failed", "busy", "no_answer")
FINAL_STATUSES = ("completed", "failed", "busy", "no_answer")
