"""Fixtures for the REST API: the bot's HTTP app with /api/v1 served by a real uvicorn on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bot.api.deps import ApiContext
from bot.http import HttpServer, create_http_app
from bot.runtime import build_pipeline
from core.classify.base import Classifier
from core.classify.offline import OfflineClassifier
from core.config import Config, HttpConfig
from storage.store import SqlStore
from storage.tokens import TokenStore

DEPARTMENT_NAMES = [d.name for d in Config().departments]


@pytest.fixture(scope="session")
def offline_classifier() -> OfflineClassifier:
    """The shipped offline model, loaded once (about half a second) for every API test."""
    config = Config()
    return OfflineClassifier.load(
        None,
        config.department_names,
        descriptions={d.name: d.description for d in config.departments},
        keywords={d.name: d.keywords for d in config.departments},
    )


@dataclass
class Api:
    """A running API: ``client`` sends the write token, ``reader`` the read token, ``anonymous`` none."""

    server: HttpServer
    context: ApiContext
    store: SqlStore
    write_token: str
    read_token: str
    client: httpx.Client
    reader: httpx.Client
    anonymous: httpx.Client

    @property
    def url(self) -> str:
        return f"{self.server.url}/api/v1"

    def create(self, body: str = "My laptop will not connect to the VPN", **fields: str) -> dict[str, Any]:
        response = self.client.post("/tickets", json={"requester": "ana@example.com", "body": body, **fields})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data


MakeApi = Callable[..., Api]


@pytest.fixture
def make_api(offline_classifier: OfflineClassifier) -> Iterator[MakeApi]:
    """Starts an API over ``store`` with a config built from keyword overrides (``api={...}``)."""
    started: list[Api] = []

    def make(store: SqlStore, *, classifier: Classifier | None = None, **overrides: object) -> Api:
        config = Config(**{"classifier": {"mode": "offline"}, **overrides})  # type: ignore[arg-type]
        pipeline = build_pipeline(config, store, classifier or offline_classifier)
        context = ApiContext(config=config, store=store, pipeline=pipeline, tokens=TokenStore(store.engine))
        _, write = context.tokens.create("writer", "write")
        _, read = context.tokens.create("reader", "read")
        server = HttpServer(HttpConfig(host="127.0.0.1", port=0), create_http_app(api=context))
        server.start()
        base = f"{server.url}/api/v1"
        api = Api(
            server=server,
            context=context,
            store=store,
            write_token=write,
            read_token=read,
            client=httpx.Client(base_url=base, headers={"Authorization": f"Bearer {write}"}, timeout=30),
            reader=httpx.Client(base_url=base, headers={"Authorization": f"Bearer {read}"}, timeout=30),
            anonymous=httpx.Client(base_url=base, timeout=30),
        )
        started.append(api)
        return api

    yield make
    for api in started:
        for client in (api.client, api.reader, api.anonymous):
            client.close()
        api.server.stop()


@pytest.fixture
def api(store: SqlStore, make_api: MakeApi) -> Api:
    """The API over the ``store`` fixture: once on SQLite, once on PostgreSQL."""
    return make_api(store)


@pytest.fixture
def sqlite_api(sqlite_store: SqlStore, make_api: MakeApi) -> Api:
    return make_api(sqlite_store)
