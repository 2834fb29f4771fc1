"""
The UI's pages over a real socket, as a browser would fetch them without JavaScript: status,
security headers, what each user sees, and the refusals of the delete action.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import time
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from registry.ops import gcstatus
from registry.storage import layout
from registry.ui import _format
from registry.ui._security import DELETED_TTL, KEY_PATH, deleted_proof
from tests.ui import content
from tests.ui.conftest import Filled, run_gc

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def page(filled: Filled, path: str, user: str | None = "alice") -> tuple[int, dict[str, str], str]:
    status, headers, body = filled.client(user).request("GET", path)
    return status, headers, body.decode()


def rows(body: str, table: str) -> list[str]:
    """The text of the first cell of each body row of table ``table``."""
    match = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', body, re.S)
    assert match is not None, body
    cells = re.findall(r"<tr><td>(.*?)</td>", match.group(1), re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in cells]


def row_cells(body: str, table: str, first: str) -> list[str]:
    """The cells' text of the row of table ``table`` whose first cell reads ``first``."""
    match = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', body, re.S)
    assert match is not None, body
    for row in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c))
            for c in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in {table}")


def csrf_token(body: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
    assert match is not None, body
    return match.group(1)


def test_repository_list_has_security_headers_and_every_repository_for_alice(
    filled: Filled,
) -> None:
    status, headers, body = page(filled, "/ui/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.startswith("<!DOCTYPE html>")
    assert rows(body, "repositories") == ["secret/db", "team/app", "team/lib"]
    assert "<caption>3 repositories</caption>" in body
    # Tags, and the bytes a pull of its one image downloads (config and layers).
    assert row_cells(body, "repositories", "secret/db") == [
        "secret/db",
        "hosted",
        "1",
        f"{filled.db.size} B",
    ]
    assert "Signed in as alice" in body


def test_the_list_shows_only_what_the_policy_lets_bob_pull(filled: Filled) -> None:
    status, _, body = page(filled, "/ui/", "bob")
    assert status == 200
    assert rows(body, "repositories") == ["team/app", "team/lib"]
    assert "secret/db" not in body
    # ... and a repository page bob may not pull is refused, as the API refuses it.
    status, _, body = page(filled, "/ui/r/secret/db", "bob")
    assert status == 403
    assert "Access denied" in body
    status, _, _ = page(filled, "/ui/r/secret/db/-/manifest/latest", "bob")
    assert status == 403


def test_the_storage_page_tells_whole_registry_facts_only_to_who_may_pull_everything(
    filled: Filled,
) -> None:
    """Where the registry keeps its files and how many repositories it holds are not for a
    user who may pull two of them: bob is told how many he may pull."""
    data = filled.registry.workdir / "data"
    _, _, body = page(filled, "/ui/storage", "alice")
    assert f"<dt>Root directory</dt><dd>{data}</dd>" in body
    assert "<dt>Repositories</dt><dd>3</dd>" in body
    assert "<dt>Uploads in progress</dt>" in body
    status, _, body = page(filled, "/ui/storage", "bob")
    assert status == 200
    assert "Root directory" not in body and str(data) not in body
    assert "<dt>Repositories</dt>" not in body and "Uploads in progress" not in body
    assert "<dt>Repositories you may pull</dt><dd>2</dd>" in body


def test_without_credentials_the_ui_asks_for_basic_credentials(filled: Filled) -> None:
    for path in ("/ui/", "/ui/r/team/app", "/ui/cache", "/ui/storage"):
        status, headers, body = page(filled, path, None)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Basic realm="ui-test"'
        assert headers["Content-Security-Policy"] == CSP
        assert "Sign in required" in body
    status, _, _ = filled.client(None).request("GET", "/ui/static/ui.js")
    assert status == 200  # the script and stylesheet carry nothing private


def test_search_is_a_substring_match(filled: Filled) -> None:
    _, _, body = page(filled, "/ui/?" + urlencode({"q": "lib"}))
    assert rows(body, "repositories") == ["team/lib"]
    _, _, body = page(filled, "/ui/?" + urlencode({"q": "a"}))
    assert rows(body, "repositories") == ["team/app", "team/lib"]
    _, _, body = page(filled, "/ui/?" + urlencode({"source": "hosted", "q": "db"}))
    assert rows(body, "repositories") == ["secret/db"]


def test_search_text_is_echoed_without_control_characters_and_cut_to_a_names_length(
    filled: Filled,
) -> None:
    # A NUL in an HTML attribute is a parse error; no name or tag holds one, nor more than
    # 255 characters, so the page echoes (and searches) only what a name could hold.
    _, _, body = page(filled, "/ui/?" + urlencode({"q": "l\x00i\x1bb"}))
    assert rows(body, "repositories") == ["team/lib"]
    assert 'name="q" type="search" value="lib"' in body
    assert "\x00" not in body and "\x1b" not in body
    _, _, body = page(filled, "/ui/?" + urlencode({"q": "x" * 300}))
    assert f'value="{"x" * 255}"' in body and "x" * 256 not in body
    _, _, body = page(filled, "/ui/r/team/lib?" + urlencode({"q": "\x00"}))
    assert "\x00" not in body


def test_repository_page_lists_tags_newest_first_with_details(filled: Filled) -> None:
    status, headers, body = page(filled, "/ui/r/team/app")
    assert status == 200
    assert headers["Content-Security-Policy"] == CSP
    # "multi" was pushed after "v1".
    assert rows(body, "tags") == ["multi", "v1"]
    assert content.OCI_INDEX in body and content.OCI_MANIFEST in body
    assert "linux/amd64, linux/arm64" in body
    assert filled.image.digest[:19] in body
    assert f"/ui/r/team/app/-/manifest/{quote(filled.index)}" in body


def test_manifest_page_shows_config_layers_history_referrers_and_pull_commands(
    filled: Filled,
) -> None:
    status, _, body = page(filled, "/ui/r/team/app/-/manifest/v1")
    assert status == 200
    text = html.unescape(body)
    host = filled.url.removeprefix("http://")
    assert f"docker pull {host}/team/app:v1" in text
    assert f"docker pull {host}/team/app@{filled.image.digest}" in text
    assert "2026-01-02T03:04:05Z" in text
    assert '["/bin/server"]' in text and '["--port", "8080"]' in text
    assert "MODE=test" in text and "8080/tcp" in text
    assert "org.opencontainers.image.title=demo" in text
    assert rows(body, "layers") == ["1", "2"]
    assert "ADD base.tar /" in text and "RUN make install" in text
    assert "ENV MODE=test" not in text  # an empty layer made no layer
    referrers = text[text.index('id="referrers"') :]
    assert f"<h3>{content.SBOM_TYPE}</h3>" in referrers
    assert f"<h3>{content.SIGNATURE_TYPE}</h3>" in referrers
    assert filled.sbom[:19] in referrers and filled.signature[:19] in referrers
    # A referrer's line names its annotations (escaped, unseen characters written out).
    assert "· dev.example.signer=release &lt;bot&gt;\\u202e ·" in body
    assert "· org.opencontainers.image.created=2026-01-02T00:00:00Z" in body
    status, _, body = page(filled, f"/ui/r/team/app/-/manifest/{filled.signature}")
    assert status == 200
    annotations = body[body.index('id="annotations"') :]
    assert (
        "<dt>dev.example.signer</dt><dd>release &lt;bot&gt;\\u202e</dd>"
        "<dt>org.opencontainers.image.created</dt><dd>2026-01-02T00:00:00Z</dd>"
    ) in annotations


def test_index_page_links_each_platform_to_its_manifest(filled: Filled) -> None:
    status, _, body = page(filled, "/ui/r/team/app/-/manifest/multi")
    assert status == 200
    assert rows(body, "platforms") == ["linux/amd64", "linux/arm64"]
    for image in filled.platforms:
        assert f"/ui/r/team/app/-/manifest/{quote(image.digest)}" in body


def test_an_index_page_marks_a_platform_deleted_since(filled: Filled) -> None:
    """A platform whose manifest was deleted is shown by its digest with why, not as a link
    to a page that would answer 404; the others stay links."""
    alice = filled.client("alice")
    _, images = content.push_index(alice, "team/gone", "multi")
    kept, deleted = images
    status, _, _ = alice.request("DELETE", f"/v2/team/gone/manifests/{deleted.digest}")
    assert status == 202
    status, _, body = page(filled, "/ui/r/team/gone/-/manifest/multi")
    assert status == 200
    assert rows(body, "platforms") == ["linux/amd64", "linux/arm64"]
    assert f'href="/ui/r/team/gone/-/manifest/{quote(kept.digest)}"' in body
    assert f"/ui/r/team/gone/-/manifest/{quote(deleted.digest)}" not in body
    cells = row_cells(body, "platforms", "linux/arm64")
    assert cells[1].endswith(" (not stored here)")
    assert 'class="missing" title="This repository does not hold this manifest' in body


def test_layer_page_names_the_step_that_made_it(filled: Filled) -> None:
    layer = filled.image.layers[1]
    path = f"/ui/r/team/app/-/layer/{layer}?" + urlencode({"manifest": filled.image.digest})
    status, _, body = page(filled, path)
    assert status == 200
    assert layer in body
    assert "RUN make install" in body
    assert f"/v2/team/app/blobs/{quote(layer)}" in body


def test_unknown_pages_are_404_pages(filled: Filled) -> None:
    for path in (
        "/ui/nothing",
        "/ui/r/team/none",
        "/ui/r/team/app/-/manifest/none",
        "/ui/r/team/app/-/",  # no page of an empty name (it was the repository's page)
        "/ui/r/team/app/-/nope/x",
    ):
        status, headers, body = page(filled, path)
        assert status == 404, path
        assert headers["Content-Security-Policy"] == CSP
        assert "Not found" in body


def _post_delete(
    filled: Filled, user: str, reference: str, token: str | None, origin: str | None
) -> tuple[int, dict[str, str], bytes]:
    fields = {"reference": reference}
    if token is not None:
        fields["csrf"] = token
    headers = dict(FORM)
    if origin is not None:
        headers["Origin"] = origin
    return filled.client(user).request(
        "POST", "/ui/r/team/lib/-/delete", urlencode(fields).encode(), headers
    )


def _tag_exists(filled: Filled, tag: str) -> bool:
    status, _, _ = filled.client("alice").request(
        "HEAD", f"/v2/team/lib/manifests/{tag}", None, {"Accept": content.OCI_MANIFEST}
    )
    return status == 200


def test_delete_is_refused_without_token_cross_origin_or_without_the_right(
    filled: Filled,
) -> None:
    content.push_image(filled.client("alice"), "team/lib", "doomed")
    _, _, body = page(filled, "/ui/r/team/lib")
    token = csrf_token(body)
    # bob sees no delete button: he may not delete.
    _, _, bob_body = page(filled, "/ui/r/team/lib", "bob")
    assert 'name="csrf"' not in bob_body
    refusals = [
        ("alice", None, filled.url, "missing or invalid CSRF token"),
        ("alice", "0" * 64, filled.url, "missing or invalid CSRF token"),
        ("alice", token, "http://evil.example", "cross-origin request"),
        ("alice", token, None, "the request's origin could not be verified"),
        ("bob", token, filled.url, "Not granted: repository:team/lib:delete"),
    ]
    for user, csrf, origin, reason in refusals:
        status, headers, answer = _post_delete(filled, user, "doomed", csrf, origin)
        assert status == 403, (user, csrf, origin)
        assert headers["Content-Security-Policy"] == CSP
        assert reason in answer.decode(), answer
        assert _tag_exists(filled, "doomed")
    # The cross-site attempts are each one warning naming the session they came with.
    log = filled.registry.log_text()
    assert (
        "UI delete in team/lib refused: cross-origin request (Origin http://evil.example,"
        " Referer -; as alice)"
    ) in log, log[-3000:]
    assert (
        "UI delete in team/lib refused: the request's origin could not be verified (Origin -,"
        " Referer -; as alice)"
    ) in log
    status, headers, answer = _post_delete(filled, "alice", "doomed", token, filled.url)
    assert status == 303, answer
    location = headers["Location"]
    assert location.startswith("/ui/r/team/lib?deleted=doomed&proof="), location
    assert not _tag_exists(filled, "doomed")
    assert _tag_exists(filled, "1.0")
    _, _, body = page(filled, location)
    assert "Deleted doomed." in body
    assert rows(body, "tags") == ["1.0"]


def _note(body: str) -> str | None:
    found = re.search(r'<p class="message" role="status">([^<]*)</p>', body)
    return html.unescape(found.group(1)) if found else None


def test_the_deleted_note_needs_the_proof_this_users_delete_was_given(filled: Filled) -> None:
    """
    "Deleted X." is said only after a delete this user's browser made a moment ago: the
    redirect's proof is signed over user, repository, reference and time.  A link anyone
    else made (or that user's, later or for another reference) shows no note.
    """
    content.push_image(filled.client("alice"), "team/lib", "noted")
    _, _, body = page(filled, "/ui/r/team/lib")
    status, headers, _ = _post_delete(filled, "alice", "noted", csrf_token(body), filled.url)
    assert status == 303
    location = headers["Location"]
    assert _note(page(filled, location)[2]) == "Deleted noted."
    # bob may pull team/lib, but alice's link says nothing to him.
    status, _, body = page(filled, location, "bob")
    assert status == 200 and _note(body) is None
    proof = parse_qs(urlsplit(location).query)["proof"][0]
    for value in ("never-existed", "Session-expired.Log-in-at-evil.example", "sha256:" + "0" * 64):
        for extra in ("", "&proof=0.00", f"&proof={proof}"):
            status, _, body = page(filled, f"/ui/r/team/lib?deleted={quote(value)}{extra}")
            assert status == 200 and _note(body) is None, (value, extra)
    # Made with the registry's key (which only the server holds), a proof is good for a minute.
    key = (filled.registry.workdir / "data" / KEY_PATH).read_bytes()
    now = int(time.time())
    for when, note in ((now - DELETED_TTL - 10, None), (now, "Deleted never-existed.")):
        made = deleted_proof(key, "alice", "team/lib", "never-existed", when)
        path = "/ui/r/team/lib?" + urlencode({"deleted": "never-existed", "proof": made})
        assert _note(page(filled, path)[2]) == note, when


def test_tags_are_paginated_and_filtered(filled: Filled) -> None:
    alice = filled.client("alice")
    image = content.push_image(alice, "team/many", "t000")
    status, _, manifest = alice.request(
        "GET", f"/v2/team/many/manifests/{image.digest}", None, {"Accept": content.OCI_MANIFEST}
    )
    assert status == 200
    for i in range(1, 60):
        status, _, _ = alice.request(
            "PUT",
            f"/v2/team/many/manifests/t{i:03d}",
            manifest,
            {"Content-Type": content.OCI_MANIFEST},
        )
        assert status == 201
    _, _, first = page(filled, "/ui/r/team/many")
    shown = rows(first, "tags")
    assert len(shown) == 50
    assert "<caption>Tags of team/many, newest first</caption>" in first
    assert "60 tags" in first
    assert 'href="/ui/r/team/many?offset=50" rel="next"' in first
    _, _, second = page(filled, "/ui/r/team/many?offset=50")
    rest = rows(second, "tags")
    assert len(rest) == 10
    assert sorted(shown + rest) == [f"t{i:03d}" for i in range(60)]
    assert 'rel="prev"' in second and 'rel="next"' not in second
    # Past the end (a stale link): an empty page whose previous page is the last one.
    _, _, beyond = page(filled, "/ui/r/team/many?offset=100000")
    assert rows(beyond, "tags") == []
    assert 'href="/ui/r/team/many?offset=50" rel="prev"' in beyond
    _, _, filtered = page(filled, "/ui/r/team/many?" + urlencode({"q": "t05"}))
    assert sorted(rows(filtered, "tags")) == [f"t05{i}" for i in range(10)]


def test_cache_and_storage_pages(filled: Filled) -> None:
    status, _, body = page(filled, "/ui/cache")
    assert status == 200
    assert "No pull-through cache is configured" in body
    status, _, body = page(filled, "/ui/storage")
    assert status == 200
    assert "No garbage collection has been recorded" in body
    assert "<dt>Space used by the registry</dt><dd>not known yet: txregistry gc counts it" in body
    assert "<dt>Driver</dt><dd>filesystem</dd>" in body
    assert "<dt>Deletes</dt><dd>enabled</dd>" in body
    # A gc run (the command line, over the same data) is shown afterwards.
    run_gc(filled)
    _, _, body = page(filled, "/ui/storage")
    assert "No garbage collection has been recorded" not in body
    assert "<dt>Mode</dt><dd>dry run</dd>" in body
    assert "<dt>Errors</dt><dd>0</dd>" in body


def _bytes(text: str) -> float:
    """A size as the pages write it (``12.3 GiB``, ``512 B``), in bytes."""
    amount, unit = text.split()
    return float(amount) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)


def test_storage_page_shows_the_space_the_registry_uses(filled: Filled) -> None:
    """The registry's own bytes (every blob's data), as the last gc counted them, whatever
    the driver; the file system's usage is a separate line."""
    run_gc(filled)
    blobs = filled.registry.workdir / "data" / layout.BLOBS
    sizes = [data.stat().st_size for data in blobs.glob("*/*/*/data")]
    assert len(sizes) > 5
    status, _, body = page(filled, "/ui/storage")
    assert status == 200
    last = json.loads((filled.registry.workdir / "data" / gcstatus.STATUS_PATH).read_bytes())
    assert (last["blobs_stored"], last["bytes_stored"]) == (len(sizes), sum(sizes))
    expected = (
        f"{_format.size(sum(sizes))} in {len(sizes)} blobs "
        f"(as of the last gc at {_format.date(last['finished'])})"
    )
    assert f"<dt>Space used by the registry</dt><dd>{expected}</dd>" in body
    # As df shows it: used of used + free (blocks reserved for root are neither; the file
    # system's total, the page's figure before, counted them as if the registry had them).
    shown = re.search(
        r"<dt>Disk used \(the whole file system\)</dt><dd>(\S+ \S+) of (\S+ \S+) "
        r"\(([\d.]+) %\), (\S+ \S+) free</dd>",
        body,
    )
    assert shown is not None, body
    used, usable, share, free = (
        _bytes(shown[1]),
        _bytes(shown[2]),
        float(shown[3]),
        _bytes(shown[4]),
    )
    usage = shutil.disk_usage(filled.registry.workdir / "data")
    assert abs(usable - (used + free)) <= 0.002 * usable + 2048, (shown[0], usage)
    assert abs(share - 100 * used / usable) <= 0.2
    assert "<dt>Would delete</dt>" in body and "<dt>Repositories scanned</dt>" in body
    # What the collection scanned and would delete, and the space every team's blobs take, are
    # whole-registry facts: not for bob, who may pull two repositories; when it ran is.
    _, _, body = page(filled, "/ui/storage", "bob")
    assert "<dt>Mode</dt><dd>dry run</dd>" in body and "<dt>Errors</dt><dd>0</dd>" in body
    assert "Repositories scanned" not in body and "Would delete" not in body
    assert "Space used" not in body
    # On a disk the registry has to itself, the disk's usage is that space too.
    assert "Disk used" not in body


def tag_dates_in_memory(filled: Filled) -> int:
    _, _, body = page(filled, "/ui/storage")
    found = re.search(r"<dt>Tag dates in memory</dt><dd>(\d+) repositor", body)
    assert found, body
    return int(found.group(1))


def test_listed_repositories_get_their_tag_dates_read_in_the_background(
    filled: Filled,
) -> None:
    alice = filled.client("alice")
    image = content.push_image(alice, "team/warm", "a")
    status, _, manifest = alice.request(
        "GET", f"/v2/team/warm/manifests/{image.digest}", None, {"Accept": content.OCI_MANIFEST}
    )
    assert status == 200
    headers = {"Content-Type": content.OCI_MANIFEST}
    status, _, _ = alice.request("PUT", "/v2/team/warm/manifests/b", manifest, headers)
    assert status == 201
    tags = filled.registry.workdir / "data" / layout.tags_dir("team/warm")
    for tag, when in (("a", 1_000_000_000), ("b", 2_000_000_000)):
        os.utime(tags / tag / "current" / "link", (when, when))
    before = tag_dates_in_memory(filled)
    # Listing it (not opening it) has its dates read, after the list page is answered.
    _, _, body = page(filled, "/ui/?q=team/warm")
    assert rows(body, "repositories") == ["team/warm"]
    for _ in range(200):
        if tag_dates_in_memory(filled) == before + 1:
            break
        time.sleep(0.05)
    assert tag_dates_in_memory(filled) == before + 1
    # The first view uses the dates read then: "a" moved on disk since (not through the
    # registry, so nothing told this process) still shows its earlier date.
    os.utime(tags / "a" / "current" / "link", (3_000_000_000, 3_000_000_000))
    _, _, body = page(filled, "/ui/r/team/warm")
    assert rows(body, "tags") == ["b", "a"]


def test_tag_dates_are_kept_for_repositories_that_exist_and_counted_only_for_all(
    filled: Filled,
) -> None:
    """
    Opening names that are not repositories remembers nothing (the memo holds 256: probes
    would push real repositories out of it), and how many are remembered (what people opened
    lately, anywhere) is told only to who may pull every repository.
    """
    page(filled, "/ui/r/team/app")  # remembered already or now: the count then holds still
    before = tag_dates_in_memory(filled)
    for i in range(3):
        status, _, _ = page(filled, f"/ui/r/team/ghost{i}")
        assert status == 404
    assert tag_dates_in_memory(filled) == before
    status, _, body = page(filled, "/ui/storage", "bob")
    assert status == 200
    assert "Tag dates in memory" not in body


def test_other_methods_are_405_pages_with_allow(filled: Filled) -> None:
    """A method a page does not take is answered by the UI (its headers, a page), not the
    API's JSON 404, and the 405 says what the page takes."""
    alice = filled.client("alice")
    cases = [
        ("/ui/", "PUT", "GET, HEAD"),
        ("/ui/", "POST", "GET, HEAD"),
        ("/ui/storage", "DELETE", "GET, HEAD"),
        ("/ui/r/team/app", "DELETE", "GET, HEAD"),
        ("/ui/r/team/app", "PATCH", "GET, HEAD"),
        ("/ui/r/team/app", "OPTIONS", "GET, HEAD"),
        ("/ui/r/team/app", "POST", "GET, HEAD"),
        ("/ui/r/team/app/-/manifest/v1", "PUT", "GET, HEAD"),
        ("/ui/r/team/app/-/delete", "DELETE", "POST"),
        ("/ui/r/team/app/-/delete", "GET", "POST"),
    ]
    for path, method, allowed in cases:
        status, headers, body = alice.request(method, path, b"" if method != "GET" else None)
        assert status == 405, (method, path, body[:300])
        assert headers.get("Allow") == allowed, (method, path)
        assert headers["Content-Security-Policy"] == CSP, (method, path)
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"Method not allowed" in body
    # Where there is no page, whatever the method: the UI's 404.
    status, headers, body = alice.request("DELETE", "/ui/nothing", b"")
    assert status == 404 and headers["Content-Security-Policy"] == CSP
    assert b"Not found" in body
    assert _tag_exists(filled, "1.0")


def test_a_bad_offset_is_a_400_page(filled: Filled) -> None:
    for value in ("abc", "-1", "1e3", "\u00b2", "9999999999", "0x10"):
        path = "/ui/r/team/app?" + urlencode({"offset": value})
        status, headers, body = page(filled, path)
        assert status == 400, (value, body[:300])
        assert headers["Content-Security-Policy"] == CSP
        assert "Bad request" in body and "Not a valid offset" in body
    for path in ("/ui/r/team/app?offset=", "/ui/r/team/app?offset=0", "/ui/r/team/app?offset=7"):
        assert page(filled, path)[0] == 200, path


def test_tags_are_sorted_by_the_date_storage_keeps(filled: Filled) -> None:
    alice = filled.client("alice")
    image = content.push_image(alice, "team/dates", "a")
    status, _, manifest = alice.request(
        "GET", f"/v2/team/dates/manifests/{image.digest}", None, {"Accept": content.OCI_MANIFEST}
    )
    assert status == 200
    for tag in ("b", "c"):
        status, _, _ = alice.request(
            "PUT",
            f"/v2/team/dates/manifests/{tag}",
            manifest,
            {"Content-Type": content.OCI_MANIFEST},
        )
        assert status == 201
    # The dates are the tag links' modification times: make "a" newest, "b" oldest.
    tags = (
        filled.registry.workdir / "data/docker/registry/v2/repositories/team/dates/_manifests/tags"
    )
    for tag, when in (("a", 3_000_000_000), ("b", 1_000_000_000), ("c", 2_000_000_000)):
        os.utime(tags / tag / "current" / "link", (when, when))
    _, _, body = page(filled, "/ui/r/team/dates")
    assert rows(body, "tags") == ["a", "c", "b"]
    assert "2065-01-24 05:20:00 UTC" in body  # a's date
    # A tag pushed through the registry is known at once (no wait for a new listing).
    status, _, _ = alice.request(
        "PUT", "/v2/team/dates/manifests/d", manifest, {"Content-Type": content.OCI_MANIFEST}
    )
    assert status == 201
    _, _, body = page(filled, "/ui/r/team/dates")
    assert rows(body, "tags") == ["a", "c", "d", "b"]  # c is dated 2033


def test_a_delete_token_is_accepted_after_a_restart(filled: Filled) -> None:
    """The key is kept in storage: another instance (or this one restarted) accepts it."""
    content.push_image(filled.client("alice"), "team/lib", "later")
    _, _, body = page(filled, "/ui/r/team/lib")
    token = csrf_token(body)
    filled.registry.stop()
    filled.registry.start()
    status, _, answer = _post_delete(filled, "alice", "later", token, filled.url)
    assert status == 303, answer
    assert not _tag_exists(filled, "later")


def test_the_stylesheet_and_script_are_linked_by_their_contents_version(filled: Filled) -> None:
    """Browsers keep them an hour (``max-age``): linked under a version of their content, an
    upgrade that changes them is fetched at once, not an hour later beside new pages."""
    _, _, body = page(filled, "/ui/")
    client = filled.client(None)
    for name in ("ui.css", "ui.js"):
        [link] = re.findall(rf'"(/ui/static/{re.escape(name)}\?v=[0-9a-f]{{12}})"', body)
        status, headers, served = client.request("GET", link)
        assert status == 200
        assert link.endswith("?v=" + hashlib.sha256(served).hexdigest()[:12])
        assert headers["Cache-Control"] == "public, max-age=3600"
