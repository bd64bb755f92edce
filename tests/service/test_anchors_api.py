"""Anchor catalogues over HTTP: the default, and an organisation's own (versioned, validated)."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from anchors import default_catalogue_text
from service.store import RedisStore
from tests.service.conftest import make_key

Client = AsyncTestClient[Litestar]


async def test_default_and_org_catalogue(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "anchors:admin", "grades:write", "scores:read")
    base = f"/v1/orgs/{org}/anchors"
    toml = {**h, "Content-Type": "application/toml"}
    default = (await client.get(f"{base}/default", headers=h)).json()
    assert default["revision"] == 0
    assert default["version"] == "okrcal-default-1"
    assert set(default["types"]) == {"metric", "milestone", "binary", "maintain"}
    assert (await client.get(base, headers=h)).json()["revision"] == 0  # none of its own yet

    # an org catalogue that lets a metric overshoot less, under a new version name
    text = default_catalogue_text().replace('version = "okrcal-default-1"', 'version = "acme-2"')
    r = await client.put(base, content=text.encode(), headers=toml)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1
    assert r.json()["version"] == "acme-2"
    text2 = text.replace('version = "acme-2"', 'version = "acme-3"')
    r = await client.put(base, content=text2.encode(), headers=toml)
    assert r.json()["revision"] == 2
    assert (await client.get(base, headers=h)).json()["version"] == "acme-3"
    assert (await client.get(base, params={"revision": 1}, headers=h)).json()["version"] == "acme-2"
    assert (await client.get(base, params={"revision": 9}, headers=h)).status_code == 404
    assert (await client.get(base, params={"revision": 0}, headers=h)).status_code == 400


async def test_invalid_catalogue_names_the_entry(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "anchors:admin")
    base = f"/v1/orgs/{org}/anchors"
    broken = default_catalogue_text().replace("[types.binary]", "[types.vibes]", 1)
    r = await client.put(base, content=broken.encode(), headers=h)
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"].startswith("types.")
    for body in (b"not = [toml", b"\xff\xfe", b'version = "x"'):
        r = await client.put(base, content=body, headers=h)
        assert r.status_code == 400, body
        assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(base, headers=h)).json()["revision"] == 0  # nothing stored
