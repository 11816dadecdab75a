"""Weaviate backend: one multi-tenant collection, one tenant per namespace (tenants never see each other)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.collections import Collection

from ragtrace.clients import weaviate_client
from ragtrace.settings import WeaviateSettings
from ragtrace.vectorstore import Backend, DocumentChunks, Hit, UnknownNamespace

_PROPERTIES = [
    Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="chunk_no", data_type=DataType.INT),
    Property(name="content", data_type=DataType.TEXT),
    Property(name="title", data_type=DataType.TEXT),
    Property(name="start", data_type=DataType.INT),
    Property(name="end", data_type=DataType.INT),
    Property(name="metadata", data_type=DataType.TEXT, index_searchable=False, index_filterable=False),
]


def object_uuid(namespace: str, chunk_id: str) -> str:
    """Deterministic: writing a chunk twice overwrites the same object."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ragtrace:{namespace}/{chunk_id}"))


class WeaviateStore:
    backend = Backend.WEAVIATE

    def __init__(self, settings: WeaviateSettings, collection: str) -> None:
        self.client = weaviate_client(settings)
        self.name = collection
        self._lock = threading.Lock()
        self._collection: Collection | None = None

    def collection(self) -> Collection:
        with self._lock:
            if self._collection is None:
                if not self.client.collections.exists(self.name):
                    try:
                        self.client.collections.create(
                            self.name,
                            vector_config=Configure.Vectors.self_provided(
                                vector_index_config=Configure.VectorIndex.hnsw(
                                    distance_metric=weaviate.classes.config.VectorDistances.COSINE
                                )
                            ),
                            multi_tenancy_config=Configure.multi_tenancy(
                                enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
                            ),
                            properties=_PROPERTIES,
                        )
                    except weaviate.exceptions.UnexpectedStatusCodeError as error:
                        if "already exists" not in str(error):  # another worker created it first
                            raise
                self._collection = self.client.collections.use(self.name)
            return self._collection

    def _tenant(self, namespace: str, must_exist: bool) -> Collection:
        collection = self.collection()
        if must_exist and not collection.tenants.exists(namespace):
            raise UnknownNamespace(namespace)
        return collection.with_tenant(namespace)

    def write(self, namespace: str, upserts: Sequence[DocumentChunks], deletes: Sequence[str]) -> None:
        tenant = self._tenant(namespace, must_exist=False)
        replaced = [d.document_id for d in upserts] + list(deletes)
        if replaced and self.collection().tenants.exists(namespace):
            tenant.data.delete_many(where=Filter.by_property("document_id").contains_any(replaced))
        objects: list[DataObject[Mapping[str, Any], None]] = [
            DataObject(
                uuid=object_uuid(namespace, chunk.chunk_id),
                vector=list(chunk.vector),
                properties={
                    "chunk_id": chunk.chunk_id,
                    "document_id": document.document_id,
                    "chunk_no": chunk.chunk_no,
                    "content": chunk.content,
                    "title": str(document.metadata.get("title", "")),
                    "start": chunk.start,
                    "end": chunk.end,
                    "metadata": json.dumps(dict(document.metadata)),
                },
            )
            for document in upserts
            for chunk in document.chunks
        ]
        if objects:
            result = tenant.data.insert_many(objects)
            if result.has_errors:
                first = next(iter(result.errors.values()))
                raise RuntimeError(f"Weaviate rejected {len(result.errors)} of {len(objects)} chunks: {first.message}")

    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        result = self._tenant(namespace, must_exist=True).query.near_vector(
            list(vector), limit=top_k, return_metadata=MetadataQuery(distance=True)
        )
        return [
            _hit(o.properties, 1.0 - float(o.metadata.distance or 0.0))  # cosine distance → similarity
            for o in result.objects
        ]

    def count(self, namespace: str, document_id: str | None = None) -> int:
        collection = self.collection()
        if not collection.tenants.exists(namespace):
            return 0
        tenant = collection.with_tenant(namespace)
        where = Filter.by_property("document_id").equal(document_id) if document_id else None
        return int(tenant.aggregate.over_all(filters=where, total_count=True).total_count or 0)

    def close(self) -> None:
        self.client.close()


def _hit(properties: Mapping[str, Any], score: float) -> Hit:
    metadata = json.loads(str(properties.get("metadata") or "{}"))
    metadata.update({k: properties.get(k) for k in ("chunk_no", "start", "end")})
    return Hit(
        chunk_id=str(properties["chunk_id"]),
        document_id=str(properties["document_id"]),
        content=str(properties["content"]),
        score=score,
        metadata=metadata,
    )
