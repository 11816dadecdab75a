"""The inbox worker's reading of MinIO's notification records, and which documents object names map to (the
worker against the real MinIO and Kafka: tests/integration/test_bucket_events.py)."""

from __future__ import annotations

import json

import pytest

from ingest.inbox import ObjectNotification, validated_document
from ragtrace.errors import PoisonMessage
from ragtrace.schemas import document_id_for_path


def minio_record(event_name: str, key: str) -> bytes:
    """A record as MinIO's Kafka target writes it (event.Log): the object's name in `Key` as it is, and
    URL-encoded in the S3 record."""
    return json.dumps(
        {
            "EventName": event_name,
            "Key": key,
            "Records": [
                {
                    "eventVersion": "2.0",
                    "eventSource": "minio:s3",
                    "eventName": event_name,
                    "s3": {
                        "bucket": {"name": key.partition("/")[0]},
                        "object": {
                            "key": key.partition("/")[2].replace("/", "%2F"),
                            "eTag": "d41d8cd98f00b204",
                            "sequencer": "18EE903E309075DF",
                        },
                    },
                }
            ],
        }
    ).encode()


def test_a_notification_names_its_bucket_object_and_document() -> None:
    notification = ObjectNotification.model_validate_json(minio_record("s3:ObjectCreated:Put", "inbox/ns1/docs/a.txt"))
    assert (notification.bucket, notification.object_name) == ("inbox", "ns1/docs/a.txt")
    assert (notification.namespace, notification.document_id) == ("ns1", "docs:a.txt")
    assert notification.event_name == "s3:ObjectCreated:Put"
    assert notification.sequencer == "18EE903E309075DF", "the same in both targets' copies of one event"
    assert notification.ingest_id == "", "a notification is no request yet"


def test_a_record_that_is_no_notification_is_refused() -> None:
    with pytest.raises(ValueError, match="EventName"):
        ObjectNotification.model_validate_json(b'{"Key": "inbox/ns1/a.txt"}')


@pytest.mark.parametrize(
    ("object_name", "document"),
    [
        ("ns1/a.txt", ("ns1", "a.txt")),
        ("ns1/docs/2024/report.pdf", ("ns1", "docs:2024:report.pdf")),
        ("ns1/a:b.txt", ("ns1", document_id_for_path("a:b.txt"))),
        ("ns1/with space.txt", ("ns1", document_id_for_path("with space.txt"))),
    ],
)
def test_an_object_names_the_document_a_file_of_that_path_would(object_name: str, document: tuple[str, str]) -> None:
    assert validated_document(object_name) == document


@pytest.mark.parametrize(
    ("object_name", "reason"),
    [
        ("loose.txt", "in no namespace folder"),
        ("Not_A_Namespace/a.txt", "namespace"),
    ],
)
def test_an_object_no_document_id_can_carry_is_refused_saying_why(object_name: str, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason) as refused:
        validated_document(object_name)
    assert object_name in str(refused.value)
