"""The AsyncAPI document FastStream generates describes every topic the pipeline uses, and the committed copy
(linked from the README and docs/) is the one `make asyncapi` writes today."""

from __future__ import annotations

import json
from typing import Any

from ragtrace.messaging import pipeline_topics
from ragtrace.settings import KafkaSettings
from ragtrace_tools.asyncapi import DOCUMENT, channel_addresses, specification


def _messages(document: dict[str, Any], address: str) -> list[dict[str, Any]]:
    messages = document["components"]["messages"]
    return [
        messages[reference["$ref"].rsplit("/", 1)[-1]]
        for channel in document["channels"].values()
        if channel["address"] == address
        for reference in channel["messages"].values()
    ]


def test_every_topic_the_pipeline_creates_is_described() -> None:
    kafka = KafkaSettings()
    assert channel_addresses(specification(kafka)) == set(pipeline_topics(kafka))


def test_messages_carry_their_schema_and_headers() -> None:
    kafka = KafkaSettings()
    document = specification(kafka)
    schemas = json.dumps(document["components"]["schemas"])
    assert "DocumentEvent" in schemas and "ChunkBatch" in schemas
    for message in _messages(document, kafka.documents_topic) + _messages(document, kafka.chunks_topic):
        assert "traceparent" in message["headers"]["properties"]
        assert "ragtrace.error.type" not in message["headers"]["properties"]
    for topic in (kafka.documents_topic, kafka.chunks_topic):
        for message in _messages(document, kafka.dead_letter_topic(topic)):
            assert {"traceparent", "ragtrace.error.type", "ragtrace.source.offset"} <= set(
                message["headers"]["properties"]
            )


def test_the_committed_document_is_current() -> None:
    committed = json.loads(DOCUMENT.read_text())
    assert committed == json.loads(json.dumps(specification(KafkaSettings()))), "run `make asyncapi`"
