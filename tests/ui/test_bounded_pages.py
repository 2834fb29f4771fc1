"""
Pages stay small whatever was pushed: a manifest or config may hold megabytes in one string or
thousands of entries, and a page shows a bounded part of each with how much more there is.
Also: the words a page says are true (a link cannot make it claim a delete) and a URL a person
may type or keep finds its page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from registry.ui import _data, _format, _pages
from tests.e2e.harness import RegistryProcess
from tests.ui import content
from tests.ui.conftest import PASSWORDS, auth_sections
from tests.ui.test_pages import rows

# A platform variant of this many characters makes a 200 KB string in a manifest.
HUGE = 200_000
TAGS_ON_HUGE = 10


def _index(client: content.Client, name: str, platforms: list[dict[str, str]]) -> dict[str, Any]:
    image = content.push_image(client, name, None)
    status, _, body = client.request(
        "GET", f"/v2/{name}/manifests/{image.digest}", None, {"Accept": content.OCI_MANIFEST}
    )
    assert status == 200
    return {
        "schemaVersion": 2,
        "mediaType": content.OCI_INDEX,
        "manifests": [
            {
                "mediaType": content.OCI_MANIFEST,
                "digest": image.digest,
                "size": len(body),
                "platform": platform,
            }
            for platform in platforms
        ],
    }


def _image_with_label(client: content.Client, name: str, tag: str, label: str) -> None:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"big": label}, "Env": [f"E{i}=x" for i in range(600)]},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    ).encode()
    _image_with_config(client, name, tag, config)


def _image_with_config(
    client: content.Client, name: str, tag: str, config: bytes, declared: int | None = None
) -> int:
    """An image whose config blob is ``config``, its size in the manifest ``declared`` (the
    pusher's word; the real size by default); the manifest's size."""
    digest = client.push_blob(name, config)
    size = len(config) if declared is None else declared
    document = {
        "schemaVersion": 2,
        "mediaType": content.OCI_MANIFEST,
        "config": {"mediaType": content.OCI_CONFIG, "digest": digest, "size": size},
        "layers": [],
    }
    client.push_manifest(name, tag, document)
    return len(json.dumps(document).encode())


def _linux_config(**settings: Any) -> bytes:
    document = {"architecture": "amd64", "os": "linux", "config": settings}
    return json.dumps({**document, "rootfs": {"type": "layers", "diff_ids": []}}).encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[content.Client]:
    folder = tmp_path_factory.mktemp("ui-bounded")
    http = {"workers": "1", "trusted_proxies": "127.0.0.1"}
    registry = RegistryProcess(folder, {**auth_sections(folder), "http": http})
    registry.start()
    try:
        alice = content.Client(registry.url, content.basic("alice", PASSWORDS["alice"]))
        huge = _index(
            alice, "team/huge", [{"os": "linux", "architecture": "amd64", "variant": "V" * HUGE}]
        )
        for i in range(TAGS_ON_HUGE):
            alice.push_manifest("team/huge", f"t{i}", huge)
        many = _index(
            alice, "team/many", [{"os": "linux", "architecture": f"a{i}"} for i in range(600)]
        )
        alice.push_manifest("team/many", "all", many)
        _image_with_label(alice, "team/labels", "v1", "L" * HUGE)
        content.push_image(alice, "team/app", "v1")
        # A config that says it is 2 bytes and is 2 MiB; one nested past the JSON parser's
        # depth; one whose label would read backwards.
        lying = _linux_config(Labels={"x": "y" * (2 * 1024 * 1024)})
        _image_with_config(alice, "team/odd", "lying", lying, declared=2)
        deep = b"[" * 200_000 + b"]" * 200_000
        _image_with_config(alice, "team/odd", "deep", deep)
        hidden = {"a": "txt\u202egpj", "b": "x\u061cy", "c": "line\u2028two", "d": "tag\U000e0041"}
        _image_with_config(alice, "team/odd", "rtl", _linux_config(Labels=hidden))
        # An index larger than a tag row reads (the manifest limit is 4 MiB).
        big = _index(alice, "team/big", [{"os": "linux", "architecture": "amd64"}])
        big["annotations"] = {"filler": "F" * (_data.MAX_DESCRIBED_SIZE + 1)}
        alice.push_manifest("team/big", "v1", big)
        yield alice
        log = registry.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert not re.search(r"status=5\d\d", log), log[-3000:]
    finally:
        registry.stop()


def _page(client: content.Client, path: str) -> tuple[int, dict[str, str], str]:
    status, headers, body = client.request("GET", path)
    return status, headers, body.decode()


def test_a_huge_platform_string_is_cut_in_the_tag_list_and_on_the_index_page(
    hostile: content.Client,
) -> None:
    status, _, body = _page(hostile, "/ui/r/team/huge")
    assert status == 200
    # Ten rows naming a 200 KB platform each would be 2 MB.
    assert len(body) < 50_000
    cut = f"linux/amd64/{'V' * 88}… ({HUGE + 12 - 100} more characters)"
    assert body.count(cut) == TAGS_ON_HUGE
    status, _, body = _page(hostile, "/ui/r/team/huge/-/manifest/t0")
    assert status == 200
    assert len(body) < 20_000
    assert cut in body


def test_an_index_of_600_platforms_shows_500_and_says_how_many_more(
    hostile: content.Client,
) -> None:
    status, _, body = _page(hostile, "/ui/r/team/many")
    assert status == 200
    row = "linux/a0, linux/a1, linux/a2, linux/a3, linux/a4, linux/a5 and 594 more"
    assert f"<td>{row}</td>" in body
    status, _, body = _page(hostile, "/ui/r/team/many/-/manifest/all")
    assert status == 200
    table = re.search(r'<table id="platforms">.*?</table>', body, re.S)
    assert table is not None
    assert table.group(0).count("<tr><td>") == _pages.MAX_ROWS
    assert "linux/a499<" in body and "linux/a500<" not in body
    assert "100 more platforms not shown." in body


def test_a_huge_label_and_600_variables_are_cut(hostile: content.Client) -> None:
    status, _, body = _page(hostile, "/ui/r/team/labels/-/manifest/v1")
    assert status == 200
    assert len(body) < 60_000
    assert f"big={'L' * 1020}… ({HUGE + 4 - 1024} more characters)" in body
    assert "E499=x" in body and "E500=x" not in body
    assert "100 more variables not shown." in body


def test_a_layer_page_reached_without_its_image_has_no_image_link(
    hostile: content.Client,
) -> None:
    image = content.push_image(hostile, "team/app", "v2")
    status, _, body = _page(hostile, f"/ui/r/team/app/-/layer/{quote(image.layers[0])}")
    assert status == 200
    assert "<dt>Image</dt>" not in body
    assert '/-/manifest/"' not in body
    status, _, body = _page(
        hostile, f"/ui/r/team/app/-/layer/{quote(image.layers[0])}?manifest={image.digest}"
    )
    assert status == 200
    assert f'<dt>Image</dt><dd><a href="/ui/r/team/app/-/manifest/{quote(image.digest)}">' in body


def test_a_link_cannot_make_the_page_claim_a_delete(hostile: content.Client) -> None:
    # Not even for a tag or manifest that is not there: it may never have been (the note
    # needs the proof a real delete's redirect carries, tests/ui/test_pages.py).
    for value in (
        "v1",
        "latest.%20Session%20expired,%20log%20in%20at%20evil.example",
        "gone",
        "sha256:" + "0" * 64,
    ):
        status, _, body = _page(hostile, f"/ui/r/team/app?deleted={value}")
        assert status == 200
        assert 'class="message"' not in body, value


def test_a_repository_url_with_a_trailing_slash_finds_the_repository(
    hostile: content.Client,
) -> None:
    status, headers, _ = hostile.request("GET", "/ui/r/team/app/")
    assert status == 301
    assert headers["Location"] == "/ui/r/team/app"
    assert _page(hostile, "/ui/r/team/nothing/")[0] == 301  # then 404, as without the slash


def test_a_bad_tag_in_a_url_is_called_a_bad_tag(hostile: content.Client) -> None:
    for reference in ("a" * 200, "v1%00"):
        status, _, body = _page(hostile, f"/ui/r/team/app/-/manifest/{reference}")
        assert status == 400
        assert "Not a valid tag" in body
        assert "did not match URI" not in body


def test_the_pull_command_leaves_out_the_https_port(hostile: content.Client) -> None:
    """Behind a TLS-terminating proxy on 443: ``docker pull reg.example.com/...``."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "reg.example.com:443"}
    status, _, body = hostile.request("GET", "/ui/r/team/app/-/manifest/v1", None, forwarded)
    assert status == 200
    assert "docker pull reg.example.com/team/app:v1" in body.decode()
    forwarded["X-Forwarded-Host"] = "reg.example.com:8443"
    status, _, body = hostile.request("GET", "/ui/r/team/app/-/manifest/v1", None, forwarded)
    assert "docker pull reg.example.com:8443/team/app:v1" in body.decode()


def test_a_config_is_read_by_its_stored_size_and_a_bad_one_leaves_the_page_whole(
    hostile: content.Client,
) -> None:
    """A config whose manifest understates its size is not read (a page would load any
    blob into memory); one nested too deep for the parser is no config; the pages answer
    200 and show the rest (the fixture asserts no traceback and no 5xx in the log)."""
    status, _, body = _page(hostile, "/ui/r/team/odd")
    assert status == 200
    assert sorted(rows(body, "tags")) == ["deep", "lying", "rtl"]
    for tag in ("lying", "deep"):
        status, _, body = _page(hostile, f"/ui/r/team/odd/-/manifest/{tag}")
        assert status == 200, tag
        assert "<dt>Labels</dt>" not in body and "yyyy" not in body, tag


def test_characters_that_hide_or_reverse_text_are_shown_as_escapes(
    hostile: content.Client,
) -> None:
    status, _, body = _page(hostile, "/ui/r/team/odd/-/manifest/rtl")
    assert status == 200
    assert "a=txt\\u202egpj" in body
    assert "\u202e" not in body
    # An Arabic letter mark, a line separator, a tag character (beyond the first plane).
    assert "b=x\\u061cy" in body and "c=line\\u2028two" in body and "d=tag\\U000e0041" in body
    assert not {"\u061c", "\u2028", "\U000e0041"} & set(body)


def test_a_manifest_larger_than_a_row_reads_is_listed_by_its_size(
    hostile: content.Client,
) -> None:
    status, _, body = _page(hostile, "/ui/r/team/big")
    assert status == 200
    row = re.search(r"<tr><td>.*?v1.*?</tr>", body, re.S)
    assert row is not None
    assert "linux/amd64" not in row.group(0)  # the index is not parsed for its row
    assert "<td>—</td>" in row.group(0)  # no media type
    status, _, manifest = hostile.request("GET", "/v2/team/big/manifests/v1")
    assert status == 200 and len(manifest) > _data.MAX_DESCRIBED_SIZE
    assert f"<td>{_format.size(len(manifest))}</td>" in row.group(0)
    status, _, body = _page(hostile, "/ui/r/team/big/-/manifest/v1")
    assert status == 200
    assert "linux/amd64" in body  # its own page reads it
