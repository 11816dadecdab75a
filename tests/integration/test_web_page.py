"""The search page, used the way a person would: in headless Chromium (Debian's, installed by the project)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from playwright.sync_api import sync_playwright

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
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make install` installs it (infra/local/install.sh chromium)"
    namespace = "page-" + uuid.uuid4().hex[:8]
    faiss_pipeline.ingest(
        "Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714.",
        namespace,
        "thermometer",
        title="Thermometers",
    )
    faiss_pipeline.ingest(
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
            page.screenshot(path=str(tmp_path / "search-page.png"), full_page=True)
        finally:
            browser.close()
    assert answer == "According to [1], Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714."
    assert titles[0] == "Thermometers" and set(titles) == {"Thermometers", "Bread"}
    assert "mode: hybrid" in meta and "trace " in meta
