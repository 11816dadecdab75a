"""The search page, used the way a person would: in headless Chromium (Debian's, installed by the project)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

from ragtrace_tools.devstack.install import command_on_first_use
from ragtrace_tools.devstack.services import Services
from tests.pipeline import API_KEY, Pipeline

# Chromium as root in a sandbox with no network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
# Trace lengths across each decade's round-step boundaries (the 94 ms trace once drew only two ticks).
AXIS_TOTALS_MS = [0.9, 4.1, 7.9, 12.6, 13, 20, 23.5, 31.7, 40, 63, 80, 94, 99.9, 140, 400, 1000, 2500, 7999]

# What the page reads of a drawn waterfall: its legend, each row's service and bar colour, the axis' ticks.
DRAWN_WATERFALL = """(selector) => {
  const root = document.querySelector(selector);
  const colourOf = (node) => getComputedStyle(node).backgroundColor;
  return {
    legend: Object.fromEntries([...root.querySelectorAll(':scope > .legend .service-key')]
                                 .map((key) => [key.dataset.service, colourOf(key.querySelector('.swatch'))])),
    bars: [...root.querySelectorAll(':scope > .span-row')]
            .map((row) => [row.dataset.service, colourOf(row.querySelector('.bar'))]),
    ticks: [...root.querySelectorAll(':scope > .axis .tick')].map((tick) => [tick.textContent, tick.style.left]),
  };
}"""


@contextlib.contextmanager
def chromium_page(**options: Any) -> Iterator[Page]:
    chromium = command_on_first_use("chromium", "chromium")  # Debian's, installed by the project's script
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()


def _search(page: Page, query: str, mode: str = "hybrid") -> None:
    page.fill("#query", query)
    page.select_option("#mode", mode)
    page.click("#search-button")


def _answered(page: Page) -> None:
    page.wait_for_function("document.getElementById('meta').textContent.includes('generator: llm')")


def test_a_person_types_a_question_and_sees_the_answer_and_sources(faiss_pipeline: Pipeline, tmp_path: Path) -> None:
    namespace = "page-" + uuid.uuid4().hex[:8]
    thermometer = faiss_pipeline.ingest(
        "Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714.",
        namespace,
        "thermometer",
        title="Thermometers",
    )
    bread = faiss_pipeline.ingest(
        "Sourdough bread rises because wild yeast ferments the dough.", namespace, "bread", title="Bread"
    )
    faiss_pipeline.wait_for(["thermometer", "bread"], namespace)

    with chromium_page() as page:
        page.goto(faiss_pipeline.search_url + "/")
        page.fill("#key", API_KEY)
        page.fill("#namespace", namespace)
        _search(page, "Who invented the mercury thermometer?")
        _answered(page)
        answer = page.text_content("#answer")
        titles = page.locator(".source strong").all_text_contents()
        scores = page.locator(".source .score").all_text_contents()
        meta = page.text_content("#meta") or ""
        provenance = page.locator(".source .provenance").first.text_content() or ""
        indexed_at = page.get_attribute(".source .provenance time", "datetime")

        # Under the answer, its trace as a waterfall read from Tempo: a time axis, a colour per service, and the
        # whole span on hover; the retrieval span links to the ingestion of each source.
        page.wait_for_selector("#waterfall .span-row[data-span='retrieve hybrid']", timeout=30_000)
        page.wait_for_selector("#waterfall .span-row[data-span^='chat ']", timeout=30_000)
        page.wait_for_selector("#waterfall .span-row[data-span='POST /api/search/stream']", timeout=30_000)
        request_rows = page.locator("#waterfall > .span-row .name").all_text_contents()
        drawn = page.evaluate(DRAWN_WATERFALL, "#waterfall")
        # The axis for any trace length, not only this trace's: ticks per total, in ms.
        tick_counts = page.evaluate(
            "(totals) => totals.map((t) => axis(t).querySelectorAll('.tick').length)", AXIS_TOTALS_MS
        )
        retrieval = page.locator("#waterfall > .span-row[data-span='retrieve hybrid']")
        retrieval_text = retrieval.text_content() or ""
        tip = retrieval.locator(".tip")
        tip_before_hover = tip.is_visible()
        retrieval.locator(".name").hover()
        tip_on_hover = tip.is_visible()
        tip_text = tip.inner_text()

        # A source's ingestion trace opens right under that source, in view.
        page.locator(".source").first.locator(f"a[data-trace='{thermometer['trace_id']}']").click()
        page.wait_for_selector("#ingestion .span-row[data-span='index write']", timeout=30_000)
        placement = page.evaluate("""() => {
          const source = document.querySelector('.source').getBoundingClientRect();
          const panel = document.getElementById('ingestion').getBoundingClientRect();
          return {gap: panel.top - source.bottom, top: panel.top, viewport: innerHeight};
        }""")
        ingestion_caption = page.text_content("#ingestion .caption") or ""
        ingestion_rows = page.locator("#ingestion .span-row .name").all_text_contents()
        ingestion_drawn = page.evaluate(DRAWN_WATERFALL, "#ingestion .waterfall")

        # Following the retrieval span's link to the other source moves the panel under that span.
        retrieval.locator(f"a[data-trace='{bread['trace_id']}']").click()
        page.wait_for_function(
            f"document.querySelector('#ingestion .caption').textContent.startsWith('trace {bread['trace_id']}')"
        )
        panel_follows = page.evaluate("document.getElementById('ingestion').previousElementSibling.dataset.span")

        # A document id: its status and its ingestion trace; a failed lookup leaves nothing of the one before.
        page.fill("#doc-id", "bread")
        page.click("#lookup button[type=submit]")
        page.wait_for_function("document.getElementById('doc-status').textContent.includes('indexed')")
        status = page.text_content("#doc-status") or ""
        bread_trace = page.get_attribute("#doc-status a[data-trace]", "data-trace")
        page.wait_for_function(
            f"document.querySelector('#ingestion .caption').textContent.startsWith('trace {bread_trace}')"
            " && document.querySelector(\"#ingestion .span-row[data-span='index write']\") !== null"
        )
        page.screenshot(path=str(tmp_path / "search-page.png"), full_page=True)
        page.fill("#doc-id", "no-such-document")
        page.click("#lookup button[type=submit]")
        page.wait_for_selector("#doc-status .error")
        failed_status = page.text_content("#doc-status") or ""
        panel_after_failure = page.is_visible("#ingestion"), page.locator("#ingestion .span-row").count()

    assert answer == "According to [1], Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714."
    assert titles[0] == "Thermometers" and set(titles) == {"Thermometers", "Bread"}
    assert all(re.fullmatch(r"RRF 0\.0\d{3}", s) for s in scores), scores
    assert "mode: hybrid" in meta and "trace " in meta
    assert "all-MiniLM-L6-v2" in provenance and thermometer["trace_id"] in provenance
    assert not ISO_TIME.search(provenance), f"a time is shown as a raw ISO string: {provenance}"
    assert indexed_at and datetime.fromisoformat(indexed_at).tzinfo, "the exact time stays in the markup"

    assert request_rows[0].strip() == "POST /api/search/stream" and "cache lookup" in [r.strip() for r in request_rows]
    assert "thermometer: " in retrieval_text and "ragtrace.search.mode=hybrid" in retrieval_text
    services = [service for service, _ in drawn["bars"]]
    assert {"search-gateway", "search-service"} <= set(services)
    assert list(drawn["legend"]) == list(dict.fromkeys(services)), "the legend names each service once, in order"
    assert len(set(drawn["legend"].values())) == len(drawn["legend"]), f"two services share a colour: {drawn['legend']}"
    assert all(colour == drawn["legend"][service] for service, colour in drawn["bars"])
    assert drawn["ticks"][0] == ["0 ms", "0%"] and len(drawn["ticks"]) >= 3
    assert all(3 <= count <= 7 for count in tick_counts), dict(zip(AXIS_TOTALS_MS, tick_counts, strict=True))
    assert [float(left.rstrip("%")) for _, left in drawn["ticks"]] == sorted(
        float(left.rstrip("%")) for _, left in drawn["ticks"]
    )
    assert not tip_before_hover and tip_on_hover
    assert tip_text.startswith("retrieve hybrid\nsearch-service") and "ragtrace.search.mode=hybrid" in tip_text

    assert 0 <= placement["gap"] < 20 and 0 <= placement["top"] < placement["viewport"], placement
    assert ingestion_caption.startswith(f"trace {thermometer['trace_id']}")
    assert ingestion_rows[0].strip() == "POST /ingest" and "upload document" in [r.strip() for r in ingestion_rows]
    assert ingestion_drawn["legend"] and ingestion_drawn["ticks"][0][0] == "0 ms"
    for service, colour in drawn["legend"].items():  # one colour per service across the page's traces
        assert ingestion_drawn["legend"].get(service, colour) == colour
    assert panel_follows == "retrieve hybrid"

    assert "bread: indexed · 1 chunks" in status and bread_trace == bread["trace_id"]
    assert not ISO_TIME.search(status), f"a time is shown as a raw ISO string: {status}"
    assert failed_status.startswith("404: ") and "bread" not in failed_status
    assert panel_after_failure == (False, 0)


LONG_SENTENCE = (
    "Daniel Gabriel Fahrenheit, a physicist and glassblower born in Danzig who spent most of his working life in"
    " Amsterdam and travelled through Germany, Denmark and Sweden to learn from the instrument makers of his time,"
    " invented the mercury thermometer in 1714 and went on to propose the temperature scale that still carries his"
    " name in several countries today."
)


def test_a_new_search_stops_the_one_before_so_answers_never_mix(
    slow_llm_search: Services, faiss_pipeline: Pipeline
) -> None:
    """The LLM streams a token every 0.1 s (conftest's slow_llm_search): the first answer is still streaming,
    about 6 s from its end, when the second search starts."""
    namespace = "race-" + uuid.uuid4().hex[:8]
    faiss_pipeline.ingest(LONG_SENTENCE, namespace, "fahrenheit", title="Fahrenheit")
    faiss_pipeline.ingest(
        "Sourdough bread rises because wild yeast ferments the dough.", namespace, "bread", title="Bread"
    )
    faiss_pipeline.wait_for(["fahrenheit", "bread"], namespace)
    first_answer = f"According to [1], {LONG_SENTENCE}"
    read_state = """() => ({
      answer: document.getElementById('answer').textContent,
      meta: document.getElementById('meta').textContent,
      titles: [...document.querySelectorAll('.source strong')].map((title) => title.textContent),
      busy: document.getElementById('search-button').getAttribute('aria-busy'),
      label: document.getElementById('search-button').textContent,
    })"""

    with chromium_page() as page:
        page.goto(f"http://127.0.0.1:{slow_llm_search.ports.gateway}/")
        page.fill("#key", API_KEY)
        page.fill("#namespace", namespace)
        _search(page, "Who invented the mercury thermometer?")
        page.wait_for_function("document.getElementById('answer').textContent.length > 0")
        during = page.evaluate(read_state)
        # A page that let the first stream run would see it end whole about 6 s on, never fail: this times out.
        with page.expect_event("requestfailed", lambda request: "mercury" in (request.post_data or "")) as stopped:
            _search(page, "Why does sourdough bread rise?")
        first_stream_end = stopped.value.failure
        _answered(page)
        # The button is given back when the second stream closes, a moment after its `done` event.
        page.wait_for_function("document.getElementById('search-button').getAttribute('aria-busy') === 'false'")
        after = page.evaluate(read_state)

    # The race was real: the first answer had only begun when the second search started.
    assert during["answer"] and first_answer.startswith(during["answer"]) and during["answer"] != first_answer
    assert during["meta"].startswith("answering… · mode: hybrid") and "generator" not in during["meta"]
    assert (during["busy"], during["label"]) == ("true", "Searching…")
    assert after["answer"] == "According to [1], Sourdough bread rises because wild yeast ferments the dough."
    assert first_stream_end == "net::ERR_ABORTED", "the first search's stream is aborted"
    assert after["titles"][0] == "Bread"
    assert (after["busy"], after["label"]) == ("false", "Search")


def test_at_420_px_wide_nothing_overflows_and_a_long_answer_scrolls_in_its_box(faiss_pipeline: Pipeline) -> None:
    namespace = "narrow-" + uuid.uuid4().hex[:8]
    # One sentence of 140 words, one chunk (200 tokens): the test LLM answers with all of it.
    phrase = "the tide rises and falls twice a day as the moon pulls the sea along every coast of the world "
    faiss_pipeline.ingest((phrase * 7).strip() + ".", namespace, "tides", title="Tides")
    faiss_pipeline.wait_for(["tides"], namespace)
    measure = """() => {
      const answer = document.getElementById('answer');
      return {pageWidth: document.documentElement.scrollWidth, viewportWidth: document.documentElement.clientWidth,
              boxHeight: answer.clientHeight, contentHeight: answer.scrollHeight,
              scrolledTo: answer.scrollTop + answer.clientHeight, viewportHeight: innerHeight};
    }"""

    with chromium_page(viewport={"width": 420, "height": 800}) as page:
        page.goto(faiss_pipeline.search_url + "/")
        page.fill("#key", API_KEY)
        page.fill("#namespace", namespace)
        _search(page, "Why does the tide rise?")
        _answered(page)
        page.wait_for_selector("#waterfall .span-row[data-span='POST /api/search/stream']", timeout=30_000)
        page.locator(".source a[data-trace]").first.click()
        page.wait_for_selector("#ingestion .span-row[data-span='index write']", timeout=30_000)
        narrow = page.evaluate(measure)

        _search(page, "moon tide", mode="keyword")
        _answered(page)
        keyword_scores = page.locator(".source .score").all_text_contents()

        page.reload()
        remembered = page.input_value("#namespace"), page.input_value("#key")

    assert narrow["pageWidth"] <= narrow["viewportWidth"], f"the page overflows at 420 px: {narrow}"
    assert narrow["contentHeight"] > narrow["boxHeight"] and narrow["boxHeight"] < narrow["viewportHeight"] / 2, narrow
    assert narrow["scrolledTo"] >= narrow["contentHeight"] - 8, "the box follows the stream to its end"
    assert keyword_scores and all(re.fullmatch(r"BM25 \d+\.\d{4}", s) for s in keyword_scores), keyword_scores
    assert remembered == (namespace, API_KEY)
