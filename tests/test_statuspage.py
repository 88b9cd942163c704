"""The status page is one self-contained, well-formed HTML document with stable ids, read
from the package's `statuspage.html`; it polls the admin endpoint's own routes."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import pytest

from addon.proxy.statuspage import render_page

VOID = {"meta", "link", "br", "img", "input", "hr", "source", "wbr", "col", "area", "base"}
KEY_IDS = (
    "total-spend",
    "total-requests",
    "unpriced",
    "fallback-rate",
    "config-version",
    "ledger-store",
    "state-store",
    "error-rate",
    "failed-count",
    "total-savings",
    "latency-p50",
    "latency-p95",
    "ttft-p50",
    "ttft-p95",
    "spend-chart",
    "requests-chart",
    "models",
    "providers",
    "requested",
    "budgets",
    "rate-limits",
    "provider-breakers",
    "breakers",
    "recent",
    "f-outcome",
    "f-model",
    "f-client",
    "detail",
    "d-fields",
    "d-attempts",
    "d-reasons",
    "d-explain",
    "config-error-card",
    "config-error",
)


class Outline(HTMLParser):
    """Collects ids, tag counts and nesting errors."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.problems: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


@pytest.fixture(scope="module")
def page() -> str:
    body = render_page()
    assert isinstance(body, bytes)
    return body.decode("utf-8")


@pytest.fixture(scope="module")
def outline(page: str) -> Outline:
    p = Outline()
    p.feed(page)
    p.close()
    return p


def test_well_formed(outline: Outline) -> None:
    assert outline.doctype.lower() == "doctype html"
    assert outline.problems == []
    assert outline.stack == []
    names = [t for t, _ in outline.tags]
    for single in ("html", "head", "body", "title", "style", "script"):
        assert names.count(single) == 1, single
    assert len(outline.ids) == len(set(outline.ids)), "ids are unique"


def test_key_numbers_have_stable_ids(outline: Outline) -> None:
    for key in KEY_IDS:
        assert key in outline.ids
    body = next(a for t, a in outline.tags if t == "body")
    assert (body.get("data-loaded"), body.get("data-refreshes")) == ("0", "0")
    windows = [
        a.get("data-window") for t, a in outline.tags if t == "button" and "data-window" in a
    ]
    assert windows == ["1h", "24h", "7d"]


@pytest.mark.parametrize(
    "forbidden",
    [
        r"https?://",
        r"//[a-z0-9.-]+\.[a-z]{2,}/",  # protocol-relative
        r"<script[^>]*\ssrc=",
        r"<link\b",
        r"@import",
        r"url\(",
        r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write",
        r"\beval\(|new Function",
    ],
)
def test_self_contained_and_no_markup_from_data(page: str, forbidden: str) -> None:
    assert not re.search(forbidden, page, re.IGNORECASE), forbidden


@pytest.mark.parametrize(
    "needle",
    [
        '"/overview?window=" + state.window',
        '"/requests?" + query()',
        '"/requests/" + encodeURIComponent(id)',
        '"/budgets"',
        '"/limits"',
        '"/status"',
        "const POLL_MS = 2000;",
        "setTimeout(refresh, POLL_MS)",
        "setInterval(tick, 1000)",
        'document.body.dataset.loaded = "1"',
        '"$" + Number(x).toFixed(6)',
        '(Number(x) * 100).toFixed(1) + "%"',
        "default-src 'none'; connect-src 'self'",
    ],
)
def test_polls_same_origin_and_formats_numbers(page: str, needle: str) -> None:
    assert needle in page


def test_title_is_escaped() -> None:
    page = render_page('Ops <b>"&"</b>').decode()
    assert page.count("<title>Ops &lt;b&gt;&quot;&amp;&quot;&lt;/b&gt;</title>") == 1
    assert "<b>" not in page
    assert "<h1>Ops &lt;b&gt;" in page
    assert "<title>Local AI Orchestrator</title>" in render_page().decode()


def test_page_is_small() -> None:
    assert len(render_page()) < 48_000


def test_page_is_the_packaged_file() -> None:
    text = resources.files("addon.proxy").joinpath("statuspage.html").read_text("utf-8")
    assert render_page("T").decode() == text.replace("@@TITLE@@", "T")
    assert "@@TITLE@@" not in render_page().decode()


@pytest.mark.parametrize(
    "rule",
    [
        r"pre \{ white-space: pre-wrap; overflow-wrap: anywhere;",  # the reload error wraps
        r"\.scroll \{ overflow-x: auto; \}",  # wide tables scroll inside their card
        r"@media \(max-width: 640px\)",  # the phone layout
        r'<meta name="viewport" content="width=device-width, initial-scale=1">',
    ],
)
def test_layout_rules_for_small_screens(page: str, rule: str) -> None:
    assert re.search(rule, page), rule
