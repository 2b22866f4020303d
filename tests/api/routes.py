"""Every route of the v1 API, with placeholders for ids: the tests for 401 and for cross-organization
404 walk this list, and ``test_openapi_lists_every_route`` keeps it in step with the app."""

from __future__ import annotations

ROUTES: list[tuple[str, str]] = [
    ("GET", "/api/v1/organizations/me"),
    ("POST", "/api/v1/workflows"),
    ("GET", "/api/v1/workflows"),
    ("GET", "/api/v1/workflows/{workflow_id}"),
    ("PATCH", "/api/v1/workflows/{workflow_id}"),
    ("DELETE", "/api/v1/workflows/{workflow_id}"),
    ("POST", "/api/v1/workflows/{workflow_id}/calls"),
    ("POST", "/api/v1/telephony-configurations"),
    ("GET", "/api/v1/telephony-configurations"),
    ("GET", "/api/v1/telephony-configurations/{config_id}"),
    ("PATCH", "/api/v1/telephony-configurations/{config_id}"),
    ("DELETE", "/api/v1/telephony-configurations/{config_id}"),
    ("GET", "/api/v1/telephony-configurations/{config_id}/status"),
    ("GET", "/api/v1/telephony-configurations/{config_id}/asterisk-snippets"),
    ("POST", "/api/v1/telephony-configurations/{config_id}/phone-numbers"),
    ("GET", "/api/v1/telephony-configurations/{config_id}/phone-numbers"),
    ("GET", "/api/v1/telephony-configurations/{config_id}/phone-numbers/{number_id}"),
    ("PATCH", "/api/v1/telephony-configurations/{config_id}/phone-numbers/{number_id}"),
    ("DELETE", "/api/v1/telephony-configurations/{config_id}/phone-numbers/{number_id}"),
    ("GET", "/api/v1/workflow-runs"),
    ("GET", "/api/v1/workflow-runs/{run_id}"),
    ("GET", "/api/v1/workflow-runs/{run_id}/recording"),
    ("POST", "/api/v1/secrets"),
    ("GET", "/api/v1/secrets"),
    ("DELETE", "/api/v1/secrets/{name}"),
]

DUMMY_IDS = {
    "workflow_id": "00000000-0000-4000-8000-000000000001",
    "config_id": "00000000-0000-4000-8000-000000000002",
    "number_id": "00000000-0000-4000-8000-000000000003",
    "run_id": "00000000-0000-4000-8000-000000000004",
    "name": "OPENAI_KEY",
}
