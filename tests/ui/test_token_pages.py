"""
The UI under token authentication without a policy: the token's ``access`` claim decides, as
for the API.  A token listing the catalog sees the names the catalog lists, but a repository's
tag count and size (what ``tags/list`` and a pull tell) and the registry-wide facts of the
storage page only where it may pull.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.auth import pki
from tests.e2e.harness import RegistryProcess
from tests.ui import content
from tests.ui.test_pages import row_cells, rows

CATALOG = {"type": "registry", "name": "catalog", "actions": ["*"]}


@attrs.define
class Signed:
    """A registry trusting tokens signed by ``key`` (an x5c chain to a test CA)."""

    registry: RegistryProcess
    key: Any
    chain: list[str]

    def client(self, access: list[dict[str, Any]]) -> content.Client:
        claims = pki.claims(time.time(), access, aud="test-registry")
        token = pki.sign_token(self.key, {"x5c": self.chain}, claims)
        return content.Client(self.registry.url, f"Bearer {token}")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    folder: Path = tmp_path_factory.mktemp("ui-token")
    ca_key = pki.new_key("ec")
    ca = pki.certificate("token CA", ca_key, ca=True)
    key = pki.new_key("ec")
    cert = pki.certificate("token signer", key, (ca_key, ca))
    sections = {
        "auth.token": {
            "realm": "https://auth.example.test/token",
            "service": "test-registry",
            "issuer": "test-issuer",
            "rootcertbundle": pki.write(folder / "token-ca.pem", pki.pem_cert(ca)),
        },
        "http": {"workers": "1"},
    }
    registry = RegistryProcess(folder, sections)
    registry.start()
    try:
        result = Signed(registry, key, pki.x5c(cert, ca))
        for name in ("team/app", "secret/db"):
            content.push_image(result.client([pki.repo_access(name, "pull", "push")]), name, "v1")
        yield result
        log = registry.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert not re.search(r"status=5\d\d", log), log[-3000:]
    finally:
        registry.stop()


def _get(client: content.Client, path: str) -> tuple[int, str]:
    status, _, body = client.request("GET", path)
    return status, body.decode()


def test_a_catalog_token_sees_names_but_not_what_only_a_pull_tells(signed: Signed) -> None:
    catalog_only = signed.client([CATALOG])
    # The API: the catalog lists both, tags/list is refused.
    assert _get(catalog_only, "/v2/secret/db/tags/list")[0] == 401
    status, body = _get(catalog_only, "/ui/")
    assert status == 200
    assert rows(body, "repositories") == ["secret/db", "team/app"]
    for name in ("secret/db", "team/app"):
        assert row_cells(body, "repositories", name) == [name, "hosted", "—", "—"]
    status, body = _get(catalog_only, "/ui/storage")
    assert status == 200
    assert "Root directory" not in body and str(signed.registry.workdir) not in body
    assert "Uploads in progress" not in body and "Tag dates in memory" not in body
    assert "<dt>Repositories you may pull</dt><dd>0</dd>" in body


def test_counts_and_sizes_show_where_the_token_may_pull(signed: Signed) -> None:
    one = signed.client([CATALOG, pki.repo_access("team/app", "pull")])
    status, body = _get(one, "/ui/")
    assert status == 200
    assert row_cells(body, "repositories", "team/app")[2] == "1"
    assert row_cells(body, "repositories", "team/app")[3].endswith(" B")
    assert row_cells(body, "repositories", "secret/db")[2:] == ["—", "—"]
    assert "<dt>Repositories you may pull</dt><dd>1</dd>" in _get(one, "/ui/storage")[1]
    every = signed.client(
        [CATALOG, pki.repo_access("team/app", "pull"), pki.repo_access("secret/db", "pull")]
    )
    status, body = _get(every, "/ui/storage")
    assert status == 200
    assert "<dt>Root directory</dt>" in body and "<dt>Repositories</dt><dd>2</dd>" in body
    assert "<dt>Uploads in progress</dt>" in body
