"""ragtrace's tools tier: what developers run, never what the image ships.

The `ragtrace` CLI (ragtrace_tools.cli), the local-stack supervisor (devstack, with the observability
backends), the reader of Tempo's traces (traces), eval, bench, bench-device, the failure drills, load-gen, and
the one client for "ingest, then wait until indexed" (client) that all of them share. Installed with the `tools` extra
(`pip install -e '.[tools]'`; `make install` does it); the container image installs `.` alone.

Dependencies point one way: tools → services (ingest, embedding, indexer, query) → core (ragtrace). The tools
may import anything; nothing imports them, and neither the services nor the core import the tools extra
(typer, rich, rank-bm25, locust, matplotlib). `make lint` checks both with import-linter (pyproject.toml).
"""
