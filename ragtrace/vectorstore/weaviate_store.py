"""Weaviate backend: one multi-tenant collection, one tenant per namespace (tenants never see each other),
and small plain collections beside it: `<collection>Model` with each namespace's embedding model, and
`<collection>Generation` with each namespace's generations (generations.py; a generation is a tenant of its
own, `<namespace>_g<N>`: the switch is one write of the namespace's object there).

The client connects on first use and again after a failure, so a service starts while Weaviate is down and
recovers when it returns; a Weaviate that does not answer is DependencyUnavailable("weaviate").
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import grpc
import httpx
import numpy as np
import weaviate
import weaviate.connect.v4
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.collections import Collection
from weaviate.collections.classes.filters import _Filters

from ragtrace.clients import weaviate_client
from ragtrace.errors import DependencyUnavailable
from ragtrace.settings import WeaviateSettings
from ragtrace.vectorstore import (
    FEEDBACK_CHUNKS,
    HYBRID_CANDIDATES,
    Backend,
    DocumentChunks,
    EmbeddingModel,
    Hit,
    Provenance,
    UnknownNamespace,
    check_model,
    expanded_query,
    written_model,
)
from ragtrace.vectorstore.generations import Generations

P = ParamSpec("P")
R = TypeVar("R")

_PROPERTIES = [
    Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="chunk_no", data_type=DataType.INT),
    Property(name="content", data_type=DataType.TEXT),
    Property(name="title", data_type=DataType.TEXT),
    Property(name="start", data_type=DataType.INT),
    Property(name="end", data_type=DataType.INT),
    Property(name="metadata", data_type=DataType.TEXT, index_searchable=False, index_filterable=False),
    Property(name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    # Each chunk carries its document's Provenance, one property per field.
    *(
        Property(name=f.name, data_type=DataType.TEXT, index_searchable=False, index_filterable=False)
        for f in fields(Provenance)
    ),
]

_MODEL_PROPERTIES = [
    Property(name="namespace", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="model", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="dimension", data_type=DataType.INT),
]

_GENERATION_PROPERTIES = [
    Property(name="namespace", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="serving", data_type=DataType.INT),
    Property(name="building", data_type=DataType.INT),  # 0: none (generation 0 is never built)
]

# Chunks read to find the documents holding a content: a document's chunks share its hash, so a few hundred
# objects name every holder that matters (the first one found is what a duplicate is reported against).
HOLDERS_LIMIT = 256


class GrpcUnavailable(Exception):
    """Weaviate's gRPC port answered UNAVAILABLE (down, restarting, or shutting down before its REST port)."""


class _FailFast:
    """Stands in for weaviate-client's private `_Retry` (weaviate/retry.py), which retries every gRPC call answered
    UNAVAILABLE five times, sleeping 1+2+4+8+16+32 s, with no setting to change it (an open proposal for one:
    weaviate/weaviate-python-client#1867). A search would hold its caller for a minute while Weaviate is away;
    ragtrace answers 503 at once instead, and its callers retry (the indexer by redelivery, a user by asking
    again). The one private use of this library; tests/unit/test_weaviate_adapter.py fails on the upgrade
    that breaks it."""

    def __init__(self, n: float = 0) -> None:
        del n  # the retry count weaviate-client asks for: none are made

    def with_exponential_backoff(
        self, count: int, error: str, f: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        try:
            return f(*args, **kwargs)
        except grpc.RpcError as rpc_error:
            if _is_unavailable(rpc_error):
                raise GrpcUnavailable(error) from rpc_error
            raise  # any other status is weaviate-client's to report, as it would

    async def awith_exponential_backoff(
        self, count: int, error: str, f: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        try:
            return await f(*args, **kwargs)
        except grpc.RpcError as rpc_error:
            if _is_unavailable(rpc_error):
                raise GrpcUnavailable(error) from rpc_error
            raise


def _is_unavailable(rpc_error: grpc.RpcError) -> bool:
    return bool(cast(grpc.Call, rpc_error).code() == grpc.StatusCode.UNAVAILABLE)


weaviate.connect.v4._Retry = _FailFast  # type: ignore[attr-defined,assignment]

_UNREACHABLE = (
    GrpcUnavailable,
    weaviate.exceptions.WeaviateConnectionError,
    weaviate.exceptions.WeaviateTimeoutError,
    weaviate.exceptions.WeaviateGRPCUnavailableError,
    weaviate.exceptions.WeaviateStartUpError,
)


def object_uuid(namespace: str, chunk_id: str) -> str:
    """Deterministic: writing a chunk twice overwrites the same object."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ragtrace:{namespace}/{chunk_id}"))


def _weaviate_call(method: Callable[Concatenate[WeaviateStore, P], R]) -> Callable[Concatenate[WeaviateStore, P], R]:
    def wrapper(self: WeaviateStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            try:
                return method(self, *args, **kwargs)
            except httpx.TransportError:
                # A pooled connection to a Weaviate that restarted since it was opened: reconnect once (every
                # call here is idempotent); failing again, Weaviate is unavailable.
                self.reset()
                return method(self, *args, **kwargs)
        except (*_UNREACHABLE, httpx.TransportError) as error:
            self.reset()
            raise DependencyUnavailable("weaviate", f"no answer ({type(error).__name__})") from error
        except ValueError as error:
            # grpc's answer to a call on a channel that another thread's reset() closed after Weaviate failed
            if "closed channel" not in str(error):
                raise
            raise DependencyUnavailable("weaviate", "the connection was closed after a failure") from error

    functools.update_wrapper(wrapper, method)
    return wrapper


class WeaviateStore:
    backend = Backend.WEAVIATE

    def __init__(self, settings: WeaviateSettings, collection: str, feedback_chunks: int = FEEDBACK_CHUNKS) -> None:
        self.settings = settings
        self.name = collection
        self.feedback_chunks = feedback_chunks
        self._lock = threading.Lock()
        self._client: weaviate.WeaviateClient | None = None
        self._collection: Collection[Any, Any] | None = None
        self._models: Collection[Any, Any] | None = None
        self._generations: Collection[Any, Any] | None = None

    def reset(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client, self._collection, self._models, self._generations = None, None, None, None

    def collection(self) -> Collection[Any, Any]:
        with self._lock:
            if self._collection is None:
                client = self._client = self._client or weaviate_client(self.settings, timeout_s=2.0)
                if not client.collections.exists(self.name):
                    self._create(client)
                self._collection = client.collections.use(self.name)
                _add_missing_properties(self._collection)
            return self._collection

    def models(self) -> Collection[Any, Any]:
        """The namespaces' embedding models: one object per namespace, without a vector."""
        self.collection()  # connects, and creates the chunks' collection on first use
        with self._lock:
            self._models = self._models or self._plain_collection("Model", _MODEL_PROPERTIES)
            return self._models

    def generations(self) -> Collection[Any, Any]:
        """The namespaces' generations: one object per namespace that was ever re-indexed, without a vector."""
        self.collection()
        with self._lock:
            self._generations = self._generations or self._plain_collection("Generation", _GENERATION_PROPERTIES)
            return self._generations

    def _plain_collection(self, suffix: str, properties: list[Property]) -> Collection[Any, Any]:
        """A collection beside the chunks' one, made on first use (call with the lock held)."""
        client = self._client
        if client is None:  # reset by another thread since
            raise DependencyUnavailable("weaviate", "disconnected")
        name = self.name + suffix
        if not client.collections.exists(name):
            _create(
                lambda: client.collections.create(
                    name, properties=properties, vector_config=Configure.Vectors.self_provided()
                )
            )
        return client.collections.use(name)

    def _create(self, client: weaviate.WeaviateClient) -> None:
        _create(
            lambda: client.collections.create(
                self.name,
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
                ),
                multi_tenancy_config=Configure.multi_tenancy(
                    enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
                ),
                properties=_PROPERTIES,
            )
        )

    def _tenant(self, namespace: str, must_exist: bool) -> Collection[Any, Any]:
        collection = self.collection()
        if must_exist and not collection.tenants.exists(namespace):
            raise UnknownNamespace(namespace)
        return collection.with_tenant(namespace)

    @_weaviate_call
    def check(self) -> None:
        self.collection()  # connects, and creates the collection on first use
        if self._client is None or not self._client.is_ready():
            self.reset()
            raise DependencyUnavailable("weaviate", "not ready")

    @_weaviate_call
    def write(self, namespace: str, upserts: Sequence[DocumentChunks], deletes: Sequence[str]) -> None:
        model = written_model(namespace, upserts)
        tenant = self._tenant(namespace, must_exist=False)
        replaced = [d.document_id for d in upserts] + list(deletes)
        indexed = self._recorded_model(namespace)
        if model is not None and indexed is not None and model != indexed:
            kept = (
                Filter.all_of([Filter.by_property("document_id").not_equal(d) for d in replaced]) if replaced else None
            )
            if self._count(namespace, kept):  # chunks of the other model stay: refused before anything changes
                check_model(namespace, indexed, model)
        if replaced and self.collection().tenants.exists(namespace):
            tenant.data.delete_many(where=Filter.by_property("document_id").contains_any(replaced))
        if model is not None and model != indexed:
            self.models().data.insert_many(
                [
                    DataObject(
                        uuid=_model_uuid(namespace),
                        properties={"namespace": namespace, "model": model.name, "dimension": model.dimension},
                    )
                ]
            )
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
                    "content_hash": document.content_hash or "",
                    **asdict(document.provenance),
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
        elif indexed is not None and deletes and not self._count(namespace):
            self.models().data.delete_by_id(_model_uuid(namespace))  # no chunks, so no model

    def _recorded_model(self, namespace: str) -> EmbeddingModel | None:
        # The tenant's existence first, over REST: a Weaviate that is down fails this at once, where the gRPC
        # lookup below would retry with a backoff of seconds first.
        if not self.collection().tenants.exists(namespace):
            return None
        found = self.models().query.fetch_object_by_id(_model_uuid(namespace))
        if found is None:
            return None
        return EmbeddingModel(str(found.properties["model"]), int(str(found.properties["dimension"])))

    @_weaviate_call
    def embedding_model(self, namespace: str) -> EmbeddingModel | None:
        return self._recorded_model(namespace)

    @_weaviate_call
    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        result = self._tenant(namespace, must_exist=True).query.near_vector(
            list(vector), limit=top_k, return_metadata=MetadataQuery(distance=True)
        )
        # Cosine distance → similarity, the score the FAISS backend reports too.
        return [_hit(o.properties, 1.0 - float(o.metadata.distance or 0.0)) for o in result.objects]

    @_weaviate_call
    def keyword_search(self, namespace: str, query: str, top_k: int) -> list[Hit]:
        result = self._tenant(namespace, must_exist=True).query.bm25(
            query, limit=top_k, return_metadata=MetadataQuery(score=True)
        )
        return [_hit(o.properties, float(o.metadata.score or 0.0)) for o in result.objects]

    @_weaviate_call
    def hybrid_search(self, namespace: str, query: str, vector: Sequence[float], top_k: int, alpha: float) -> list[Hit]:
        """As the FAISS backend, with Weaviate's own `rankedFusion` (the same formula as `fused_ranking`): one
        hybrid query with equal weights finds the feedback chunks, a second ranks with the expanded vector."""
        tenant = self._tenant(namespace, must_exist=True)
        if self.feedback_chunks:
            # The FAISS backend's candidate depth, so that both backends choose the feedback from as many.
            feedback = tenant.query.hybrid(
                query,
                vector=list(vector),
                alpha=0.5,
                limit=max(top_k * 4, HYBRID_CANDIDATES),
                fusion_type=HybridFusion.RANKED,
                include_vector=True,
                return_properties=["chunk_id"],
            )
            vectors = [o.vector["default"] for o in feedback.objects[: self.feedback_chunks]]
            vector = expanded_query(vector, np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
        result = tenant.query.hybrid(
            query,
            vector=list(vector),
            alpha=alpha,
            limit=top_k,
            fusion_type=HybridFusion.RANKED,
            return_metadata=MetadataQuery(score=True),
        )
        return [_hit(o.properties, float(o.metadata.score or 0.0)) for o in result.objects]

    @_weaviate_call
    def documents_with_content(self, namespace: str, content_hash: str) -> list[str]:
        if not self.collection().tenants.exists(namespace):
            return []
        found = self._tenant(namespace, must_exist=False).query.fetch_objects(
            filters=Filter.by_property("content_hash").equal(content_hash),
            limit=HOLDERS_LIMIT,
            return_properties=["document_id"],
        )
        return sorted({str(o.properties["document_id"]) for o in found.objects})

    @_weaviate_call
    def count(self, namespace: str, document_id: str | None = None) -> int:
        return self._count(namespace, Filter.by_property("document_id").equal(document_id) if document_id else None)

    def _count(self, namespace: str, where: _Filters | None = None) -> int:
        collection = self.collection()
        if not collection.tenants.exists(namespace):
            return 0
        tenant = collection.with_tenant(namespace)
        return int(tenant.aggregate.over_all(filters=where, total_count=True).total_count or 0)

    def namespaces(self) -> list[str]:
        return sorted(self.collection().tenants.get())

    @_weaviate_call
    def document_ids(self, name: str) -> set[str]:
        if not self.collection().tenants.exists(name):
            return set()
        objects = self._tenant(name, must_exist=False).iterator(return_properties=["document_id"])
        return {str(o.properties["document_id"]) for o in objects}

    @_weaviate_call
    def drop(self, name: str) -> None:
        if self.collection().tenants.exists(name):
            self.collection().tenants.remove([name])
        self.models().data.delete_by_id(_model_uuid(name))

    def release(self, name: str) -> None:
        """Nothing is held of a tenant between calls."""

    # the catalog of generations

    @_weaviate_call
    def read_generations(self, namespace: str) -> Generations:
        # Whether there is an object first, over REST, as in _recorded_model: a Weaviate that is down fails
        # this at once; and a namespace never re-indexed, most of them, costs this one round trip.
        generations = self.generations()
        if not generations.data.exists(_model_uuid(namespace)):
            return Generations()
        found = generations.query.fetch_object_by_id(_model_uuid(namespace))
        if found is None:
            return Generations()
        building = int(str(found.properties["building"]))
        return Generations(int(str(found.properties["serving"])), building or None)

    @_weaviate_call
    def begin_generation(self, namespace: str) -> int:
        # No compare-and-set in Weaviate: two replicas beginning at once write the same; the re-index job's
        # record in MinIO (ragtrace/reindex.py) is what lets one re-index of a namespace run at a time.
        current = self.read_generations(namespace)
        if current.building is not None:
            return current.building
        self._write_generations(namespace, Generations(current.serving, current.serving + 1))
        return current.serving + 1

    @_weaviate_call
    def switch_generation(self, namespace: str, generation: int) -> bool:
        if self.read_generations(namespace).building != generation:
            return False
        self._write_generations(namespace, Generations(generation))
        return True

    def _write_generations(self, namespace: str, generations: Generations) -> None:
        properties = {"namespace": namespace, "serving": generations.serving, "building": generations.building or 0}
        self.generations().data.insert_many([DataObject(uuid=_model_uuid(namespace), properties=properties)])

    def close(self) -> None:
        self.reset()


def _create(create: Callable[[], object]) -> None:
    try:
        create()
    except weaviate.exceptions.UnexpectedStatusCodeError as error:
        if "already exists" not in str(error):  # another worker created it first
            raise


def _add_missing_properties(collection: Collection[Any, Any]) -> None:
    """A collection created by an earlier version gets the properties added since (they are all optional)."""
    present = {p.name for p in collection.config.get().properties}
    for missing in (p for p in _PROPERTIES if p.name not in present):
        collection.config.add_property(missing)


def _model_uuid(namespace: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ragtrace:{namespace}"))


def _hit(properties: Mapping[str, Any], score: float) -> Hit:
    metadata = json.loads(str(properties.get("metadata") or "{}"))
    metadata.update({k: properties.get(k) for k in ("chunk_no", "start", "end")})
    return Hit(
        chunk_id=str(properties["chunk_id"]),
        document_id=str(properties["document_id"]),
        content=str(properties["content"]),
        score=score,
        metadata=metadata,
        provenance=Provenance(**{f.name: str(properties.get(f.name) or "") for f in fields(Provenance)}),
    )
