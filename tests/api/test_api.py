"""The REST API over real HTTP on SQLite and PostgreSQL: create, list, show, change, re-classify, auth, limits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from core.classify.claude import ClaudeClassifier
from core.classify.fallback import FallbackClassifier
from core.config import DEFAULT_DEPARTMENTS
from core.message import Channel
from storage.store import SqlStore
from tests.api.conftest import Api, MakeApi
from tests.fakes import anthropic_api as fake_api
from tests.fakes.anthropic_api import FakeAnthropicAPI, tool_call

anthropic_api = fake_api.anthropic_api


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


def event_kinds(api: Api, ticket_id: int) -> list[str]:
    return [e.kind.value for e in api.store.ticket_events(ticket_id)]


# -- create ------------------------------------------------------------------------------------------


def test_create_goes_through_the_pipeline_and_a_retry_with_the_same_key_is_one_ticket(api: Api) -> None:
    body = {"requester": "ana@example.com", "subject": "VPN", "body": "My laptop will not connect to the VPN"}
    first = api.client.post("/tickets", json=body, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == 201, first.text
    ticket = first.json()
    assert ticket["ref"] == f"#{ticket['id']}"
    assert ticket["channel"] == Channel.API.value
    assert ticket["department"] == "IT Support"
    assert ticket["classifier"] == "offline" and 0 < ticket["confidence"] <= 1
    assert event_kinds(api, ticket["id"]) == ["created", "classified", "routed"]

    again = api.client.post("/tickets", json=body, headers={"Idempotency-Key": "req-1"})
    assert again.status_code == 200
    assert again.json()["id"] == ticket["id"]
    reused = api.client.post("/tickets", json={**body, "body": "something else"}, headers={"Idempotency-Key": "req-1"})
    assert reused.status_code == 422
    assert error(reused)["code"] == "idempotency_key_reused"
    # Without a key every POST is a new request.
    assert api.client.post("/tickets", json=body).json()["id"] != ticket["id"]
    listed = api.client.get("/tickets").json()["items"]
    assert len(listed) == 2


def test_validation_errors_name_the_field_and_store_nothing(api: Api) -> None:
    missing = api.client.post("/tickets", json={"body": "help"})
    assert missing.status_code == 422
    err = error(missing)
    assert err["code"] == "invalid" and "requester" in err["message"]
    assert [f["field"] for f in err["fields"]] == ["requester"]

    empty = api.client.post("/tickets", json={"requester": "ana@example.com", "subject": " ", "body": ""})
    assert empty.status_code == 422 and "subject or a body" in empty.text
    nul = api.client.post("/tickets", json={"requester": "ana@example.com", "body": "a\x00b"})
    assert nul.status_code == 422 and error(nul)["fields"][0]["field"] == "body"
    extra = api.client.post("/tickets", json={"requester": "ana@example.com", "body": "x", "departmnet": "HR"})
    assert extra.status_code == 422 and error(extra)["fields"][0]["field"] == "departmnet"
    not_json = api.client.post("/tickets", content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert api.store.list_inbound(status=None, limit=10) == []


# -- auth and rate limits ----------------------------------------------------------------------------


def test_tokens_authenticate_and_scopes_authorise(store: SqlStore, make_api: MakeApi) -> None:
    api = make_api(store, api={"token_cache_seconds": 0})
    none = api.anonymous.get("/tickets")
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"] == "Bearer"
    assert error(none)["code"] == "unauthorized"
    bad = api.anonymous.get("/tickets", headers={"Authorization": "Bearer tbk_not-a-token"})
    assert bad.status_code == 401
    assert api.anonymous.get("/tickets", headers={"Authorization": f"Basic {api.read_token}"}).status_code == 401

    assert api.reader.get("/tickets").status_code == 200
    forbidden = api.reader.post("/tickets", json={"requester": "ana@example.com", "body": "VPN down"})
    assert forbidden.status_code == 403
    assert error(forbidden)["code"] == "forbidden"
    assert api.store.list_inbound(status=None, limit=10) == []  # refused before anything was stored

    [reader] = [t for t in api.context.tokens.list() if t.name == "reader"]
    assert reader.last_used_at is not None
    api.context.tokens.revoke("reader")
    assert api.reader.get("/tickets").status_code == 401


def test_each_token_has_its_own_rate_limit_with_retry_after(sqlite_store: SqlStore, make_api: MakeApi) -> None:
    api = make_api(sqlite_store, api={"rate_limit_per_second": 0.5, "rate_limit_burst": 3})
    assert [api.reader.get("/departments").status_code for _ in range(3)] == [200, 200, 200]
    limited = api.reader.get("/departments")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"  # one request per 2 s, rounded up to whole seconds
    assert error(limited)["code"] == "rate_limited"
    assert api.client.get("/departments").status_code == 200  # another token is unaffected


# -- read --------------------------------------------------------------------------------------------


def test_unknown_ids_are_404_with_the_error_body(api: Api) -> None:
    for response in (
        api.client.get("/tickets/999999"),
        api.client.patch("/tickets/999999", json={"status": "resolved"}),
        api.client.post("/tickets/999999/classify"),
    ):
        assert response.status_code == 404
        assert error(response) == {"code": "not_found", "message": "no ticket #999999"}
    assert api.client.get("/tickets/0").status_code == 422
    assert api.client.get("/tickets/99999999999").status_code == 422
    assert error(api.client.get("/nowhere"))["code"] == "not_found"


def test_filters_compose_and_cursor_pages_are_stable(api: Api) -> None:
    created = [
        api.create("My laptop will not connect to the VPN", requester="ana@example.com"),
        api.create("The heating in room 4 is broken", requester="bo@example.com"),
        api.create("Please reimburse my train ticket expense 50%", requester="ana@example.com"),
        api.create("I forgot my password again", requester="cy@example.com"),
        api.create("The printer on floor 2 is jammed", requester="ana@example.com"),
    ]
    ids = [t["id"] for t in created]
    everything = api.client.get("/tickets").json()
    assert [t["id"] for t in everything["items"]] == ids[::-1]  # newest first
    assert everything["next_cursor"] is None

    seen: list[int] = []
    cursor = None
    extra = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/tickets", params=params).json()
        seen += [t["id"] for t in page["items"]]
        api.create("A ticket created while paging does not shift the pages", requester="zed@example.com")
        extra += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    def ids_for(**params: Any) -> list[int]:
        response = api.client.get("/tickets", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["items"]]

    assert ids_for(requester="ana@example.com") == [ids[4], ids[2], ids[0]]
    assert ids_for(q="HEATING") == [ids[1]]
    assert ids_for(q="50%") == [ids[2]]  # LIKE wildcards are literal
    assert ids_for(q="password", requester="ana@example.com") == []
    dept = created[3]["department"]
    assert ids[3] in ids_for(department=dept.lower())  # department names are matched case-insensitively
    api.client.patch(f"/tickets/{ids[1]}", json={"status": "resolved"})
    assert ids_for(status="resolved") == [ids[1]]
    assert set(ids_for(status=["resolved", "new"], requester="bo@example.com")) == {ids[1]}
    assert ids[1] not in ids_for(open="true")
    assert ids_for(channel="email") == []
    assert len(ids_for(channel="api", limit=1000)) == 5 + extra
    now = datetime.now(UTC)
    assert ids_for(created_from=(now + timedelta(minutes=1)).isoformat()) == []
    assert ids_for(created_to=ids_and_time(created[0]), requester="ana@example.com") == []
    assert ids_for(updated_from=(now - timedelta(minutes=5)).isoformat(), status="resolved") == [ids[1]]

    naive = api.client.get("/tickets", params={"created_from": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and error(naive)["fields"][0]["field"] == "created_from"
    assert error(api.client.get("/tickets", params={"cursor": "nonsense"}))["fields"][0]["field"] == "cursor"
    unknown = api.client.get("/tickets", params={"department": "Marketing"})
    assert unknown.status_code == 422 and "Marketing" in error(unknown)["message"]
    assert api.client.get("/tickets", params={"status": "open-ish"}).status_code == 422
    assert api.client.get("/tickets", params={"limit": 0}).status_code == 422


def ids_and_time(ticket: dict[str, Any]) -> str:
    return str(ticket["created_at"])


def test_get_shows_the_ticket_with_its_events(api: Api) -> None:
    ticket = api.create()
    shown = api.reader.get(f"/tickets/{ticket['id']}").json()
    assert shown["id"] == ticket["id"] and shown["body"] == "My laptop will not connect to the VPN"
    assert [e["kind"] for e in shown["events"]] == ["created", "classified", "routed"]
    assert shown["events"][1]["actor"] == "classifier:offline"


# -- change ------------------------------------------------------------------------------------------


def test_patch_records_each_change_as_an_event(api: Api) -> None:
    ticket = api.create()
    changed = api.client.patch(
        f"/tickets/{ticket['id']}",
        json={
            "status": "in_progress",
            "priority": "urgent",
            "assignee": "dana",
            "department": "facilities",
            "note": "badge reader",
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["status"], body["priority"], body["assignee"], body["department"]) == (
        "in_progress",
        "urgent",
        "dana",
        "Facilities",
    )
    added = body["events"][3:]
    assert [e["kind"] for e in added] == ["rerouted", "priority", "assigned", "status"]
    assert {e["actor"] for e in added} == {"api:writer"}
    assert added[0]["data"]["from"] == "IT Support" and added[0]["data"]["note"] == "badge reader"

    # The same values again change nothing and record nothing.
    same = api.client.patch(f"/tickets/{ticket['id']}", json={"status": "in_progress", "assignee": "dana"})
    assert len(same.json()["events"]) == len(body["events"])
    unassigned = api.client.patch(f"/tickets/{ticket['id']}", json={"assignee": None}).json()
    assert unassigned["assignee"] is None and unassigned["events"][-1]["kind"] == "assigned"


def test_a_bad_patch_changes_nothing(api: Api) -> None:
    ticket = api.create()
    before = api.client.get(f"/tickets/{ticket['id']}").json()
    for body, field in [
        ({"status": "resolved", "department": "Marketing"}, "department"),
        ({"status": "done"}, "status"),
        ({"priority": "whenever", "assignee": "dana"}, "priority"),
        ({"note": "only a note"}, "body"),
        ({"status": None}, "body"),
        ({"statsu": "resolved"}, "statsu"),
    ]:
        response = api.client.patch(f"/tickets/{ticket['id']}", json=body)
        assert response.status_code == 422, (body, response.text)
        fields = [f["field"] for f in error(response).get("fields", [])]
        assert field in fields or field in error(response)["message"], (body, response.text)
    assert api.reader.patch(f"/tickets/{ticket['id']}", json={"status": "resolved"}).status_code == 403
    assert api.client.get(f"/tickets/{ticket['id']}").json() == before


# -- classify ----------------------------------------------------------------------------------------


def test_classify_shows_the_verdict_and_changes_nothing_unless_applied(api: Api) -> None:
    ticket = api.create("Please reimburse my hotel invoice from the conference")
    events = event_kinds(api, ticket["id"])
    result = api.reader.post(f"/tickets/{ticket['id']}/classify").json()
    assert result["applied"] is False and result["changes"] == []
    assert [v["role"] for v in result["verdicts"]] == ["offline"]
    assert result["effective"]["department"] == ticket["department"] or result["effective"]["route"]["triaged"]
    assert event_kinds(api, ticket["id"]) == events
    assert api.reader.post(f"/tickets/{ticket['id']}/classify", params={"apply": "true"}).status_code == 403


@pytest.fixture
def claude_primary(anthropic_api: FakeAnthropicAPI, offline_classifier: Any) -> Iterator[FallbackClassifier]:
    claude = ClaudeClassifier(
        departments=DEFAULT_DEPARTMENTS, api_key="sk-ant-test-key", base_url=anthropic_api.url, max_retries=0
    )
    chain = FallbackClassifier(primary=claude, fallback=offline_classifier, deadline=10)
    yield chain
    chain.close()
    claude.close()


def test_classify_asks_each_classifier_and_apply_reroutes(
    sqlite_store: SqlStore, make_api: MakeApi, anthropic_api: FakeAnthropicAPI, claude_primary: FallbackClassifier
) -> None:
    api = make_api(sqlite_store, classifier=claude_primary)
    anthropic_api.script(tool_call("IT Support", "medium", 0.9))
    ticket = api.create("The heating in my office is broken")
    assert (ticket["department"], ticket["classifier"]) == ("IT Support", "claude")

    anthropic_api.script(tool_call("Facilities", "high", 0.95, summary="Heating broken"))
    result = api.client.post(f"/tickets/{ticket['id']}/classify", params={"apply": "true"}).json()
    primary, offline = result["verdicts"]
    assert (primary["role"], primary["classifier"], primary["department"]) == ("primary", "claude", "Facilities")
    assert (offline["role"], offline["classifier"]) == ("offline", "offline")
    assert result["applied"] is True
    assert result["changes"] == ["department: IT Support -> Facilities", "priority: medium -> high"]
    assert (result["ticket"]["department"], result["ticket"]["priority"]) == ("Facilities", "high")
    assert event_kinds(api, ticket["id"])[-2:] == ["rerouted", "priority"]

    from tests.fakes.anthropic_api import server_error

    anthropic_api.script(server_error())
    down = api.reader.post(f"/tickets/{ticket['id']}/classify").json()
    assert down["verdicts"][0]["available"] is False and down["verdicts"][0]["error"]
    assert down["effective"]["classifier"] == "offline"


# -- departments, stats, docs ------------------------------------------------------------------------


def test_departments_and_stats(api: Api) -> None:
    first = api.create("My laptop will not connect to the VPN")
    api.create("The heating in room 4 is broken")
    api.client.patch(f"/tickets/{first['id']}", json={"status": "resolved", "department": "HR"})

    departments = api.reader.get("/departments").json()
    assert [d["name"] for d in departments] == [d.name for d in DEFAULT_DEPARTMENTS]
    assert sum(d["open_tickets"] for d in departments) == 1
    assert [d["name"] for d in departments if d["triage"]] == ["General"]

    stats = api.reader.get("/stats").json()
    assert stats["total"] == 2
    assert stats["by_status"] == {"new": 1, "resolved": 1}
    assert stats["by_channel"] == {"api": 2}
    assert sum(stats["by_department"].values()) == 2 and stats["by_department"]["HR"] == 1
    assert stats["by_classifier"] == {"offline": 2}
    assert stats["reroute_rate"] == 0.5
    assert 0 < stats["mean_confidence"] <= 1
    assert stats["median_resolution_seconds"] is not None and stats["median_resolution_seconds"] >= 0
    today = datetime.now(UTC).date().isoformat()
    assert stats["per_day"] == [{"day": today, "created": 2, "resolved": 1}]

    past = api.reader.get("/stats", params={"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"})
    assert past.json()["total"] == 0 and past.json()["reroute_rate"] is None
    backwards = api.reader.get("/stats", params={"since": "2020-01-02T00:00:00Z", "until": "2020-01-01T00:00:00Z"})
    assert backwards.status_code == 422


def test_openapi_document_and_interactive_docs(sqlite_api: Api) -> None:
    base = sqlite_api.server.url
    document = httpx.get(f"{base}/api/v1/openapi.json").json()
    assert document["info"]["title"] == "ticketbot API"
    assert {"/tickets", "/tickets/{ticket_id}", "/tickets/{ticket_id}/classify", "/departments", "/stats"} <= set(
        document["paths"]
    )
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = httpx.get(f"{base}/api/v1/docs")
    assert docs.status_code == 200 and "/api/v1/openapi.json" in docs.text
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}  # the bot's own routes are untouched
    assert httpx.get(f"{base}/openapi.json").status_code == 404
