"""The search page, used the way a person would: in headless Chromium (Debian's, installed by the project)."""

from __future__ import annotations

import uuid
from pathlib import Path

from playwright.sync_api import sync_playwright

from ragtrace_tools.devstack.install import command_on_first_use
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


def test_a_person_types_a_question_and_sees_the_answer_and_sources(faiss_pipeline: Pipeline, tmp_path: Path) -> None:
    chromium = command_on_first_use("chromium", "chromium")  # Debian's, installed by the project's script
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

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(faiss_pipeline.search_url + "/")
            page.fill("#key", API_KEY)
            page.fill("#namespace", namespace)
            page.fill("#query", "Who invented the mercury thermometer?")
            page.select_option("#mode", "hybrid")
            page.click("button[type=submit]")
            page.wait_for_function("document.getElementById('meta').textContent.includes('generator: llm')")
            answer = page.text_content("#answer")
            titles = page.locator(".source strong").all_text_contents()
            meta = page.text_content("#meta") or ""
            provenance = page.locator(".source .provenance").first.text_content() or ""

            # Under the answer, its trace as a waterfall read from Tempo; the retrieval span links to the
            # ingestion of each source, and following the link shows that trace.
            page.wait_for_selector("#waterfall .span-row[data-span='retrieve hybrid']", timeout=30_000)
            page.wait_for_selector("#waterfall .span-row[data-span^='chat ']", timeout=30_000)
            page.wait_for_selector("#waterfall .span-row[data-span='POST /api/search/stream']", timeout=30_000)
            request_rows = page.locator("#waterfall .span-row .name").all_text_contents()
            retrieval = page.locator("#waterfall .span-row[data-span='retrieve hybrid']")
            retrieval_text = retrieval.text_content() or ""
            retrieval.locator(f"a[data-trace='{thermometer['trace_id']}']").click()
            page.wait_for_selector("#ingestion .span-row[data-span='index write']", timeout=30_000)
            ingestion_caption = page.text_content("#ingestion .caption") or ""
            ingestion_rows = page.locator("#ingestion .span-row .name").all_text_contents()

            # A document id: its status and its ingestion trace.
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
        finally:
            browser.close()
    assert answer == "According to [1], Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714."
    assert titles[0] == "Thermometers" and set(titles) == {"Thermometers", "Bread"}
    assert "mode: hybrid" in meta and "trace " in meta
    assert "all-MiniLM-L6-v2" in provenance and thermometer["trace_id"] in provenance
    assert request_rows[0].strip() == "POST /api/search/stream" and "cache lookup" in [r.strip() for r in request_rows]
    assert "thermometer: " in retrieval_text and "ragtrace.search.mode=hybrid" in retrieval_text
    assert ingestion_caption.startswith(f"trace {thermometer['trace_id']}")
    assert ingestion_rows[0].strip() == "POST /ingest" and "upload document" in [r.strip() for r in ingestion_rows]
    assert "bread: indexed · 1 chunks" in status and bread_trace == bread["trace_id"]
