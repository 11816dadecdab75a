# One image for every ragtrace process; the container's args name the module to run:
#   ingest.app | embedding.worker | embedding.server | indexer.worker | query.server | query.app
# Built by `make cluster-start` (infra/kind/cluster.sh). PyPI's torch wheel carries CUDA; FAISS=cpu (the cpu
# overlay's ragtrace:<version>) or FAISS=gpu (the gpu overlay's ragtrace:<version>-gpu: faiss-gpu, the pyproject's
# `gpu` extra) chooses the index's faiss. The embedding model (all-MiniLM-L6-v2) ships inside it, nothing is
# downloaded at run time.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG FAISS=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/ragtrace
COPY pyproject.toml constraints.txt README.md ./
COPY proto ./proto
COPY ragtrace ./ragtrace
COPY ingest ./ingest
COPY embedding ./embedding
COPY indexer ./indexer
COPY query ./query
# The gRPC code is generated here, as `make install` does locally, and never committed.
RUN python -m pip install -c constraints.txt grpcio-tools \
 && python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. proto/ragtrace/v1/*.proto \
 && /opt/ragtrace/bin/pip install -c constraints.txt ".[${FAISS}]"
# The CPU embedding backend's ONNX file, exported once from the bundled model (embedding/export.py).
ENV RAGTRACE_EMBEDDING_ONNX_CACHE_DIR=/opt/ragtrace/onnx
RUN HF_HUB_OFFLINE=1 /opt/ragtrace/bin/python -m embedding.export

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ragtrace && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ragtrace
COPY --from=build /opt/ragtrace /opt/ragtrace
ENV PATH=/opt/ragtrace/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    RAGTRACE_EMBEDDING_ONNX_CACHE_DIR=/opt/ragtrace/onnx
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["ingest.app"]
