"""POST /api/v1/import over real HTTP (uvicorn on a free port), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from tests.api.conftest import Api

CSV = "external_id,subject,body,requester,department\nH-1,VPN,It fails,ana@example.com,IT Support\nH-2,x,y,,HR\n"


def test_multipart_upload_imports_and_reports(api: Api) -> None:
    response = api.client.post("/import", files={"file": ("legacy.csv", CSV.encode(), "text/csv")})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["imported"], report["bad"], report["exit_code"]) == (1, 1, 1)
    assert report["errors"] == [{"row": 2, "line": 3, "reason": "missing requester"}]
    again = api.client.post("/import", files={"file": ("legacy.csv", CSV.encode(), "text/csv")}).json()
    assert (again["imported"], again["duplicates"]) == (0, 1)
    [ticket] = api.client.get("/tickets").json()["items"]
    assert ticket["subject"] == "VPN" and ticket["channel"] == "api"
    events = api.client.get(f"/tickets/{ticket['id']}").json()["events"]
    assert [(e["kind"], e["actor"]) for e in events] == [("imported", "api:writer")]
    assert events[0]["data"]["source"] == "legacy.csv"


def test_raw_body_with_format_mapping_and_classify(api: Api) -> None:
    lines = "\n".join(
        json.dumps({"t": t, "who": "bo@example.com"})
        for t in ("Payroll error on my payslip", "The office heating is broken")
    )
    response = api.client.post(
        "/import",
        params={"format": "jsonl", "map": ["body=t", "requester=who"], "classify": "true"},
        content=lines.encode(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["imported"], response.json()["classified"]) == (2, 2)
    departments = sorted(t["department"] for t in api.client.get("/tickets").json()["items"])
    assert departments == ["Facilities", "HR"]


def test_auth_scope_and_unusable_input(api: Api) -> None:
    assert api.anonymous.post("/import", content=CSV, params={"format": "csv"}).status_code == 401
    assert api.reader.post("/import", content=CSV, params={"format": "csv"}).status_code == 403
    unusable = api.client.post("/import", content=b"subject\nx\n", params={"format": "csv"})
    assert unusable.status_code == 422 and "no requester column" in unusable.json()["error"]["message"]
    bomb = api.client.post(
        "/import", content=b'<!DOCTYPE t [<!ENTITY a "b">]><tickets/>', headers={"Content-Type": "application/xml"}
    )
    assert bomb.status_code == 422 and "refused XML" in bomb.json()["error"]["message"]
    unknown = api.client.post("/import", content=b"abc")
    assert unknown.status_code == 422 and "give ?format=" in unknown.json()["error"]["message"]
    bad_map = api.client.post("/import", content=CSV, params={"format": "csv", "map": "nope=x"})
    assert bad_map.status_code == 422 and "unknown field 'nope'" in bad_map.json()["error"]["message"]
    assert api.client.get("/tickets").json()["items"] == []
