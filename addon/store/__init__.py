"""Persistent stores.

- `ledgers`        the ledger interface: open a writer or a reader for the configured store
- `sqlite_ledger`  the embedded SQLite ledger (WAL, a background writer thread)
- `pgledger`       the PostgreSQL ledger, with a disk spool while the server is down
- `reports`        `costs` / `explain` reports over ledger rows
- `benchmarks`     the benchmark DB: schema, reads for the catalog, the bundled file

May import `addon.routing`, `addon.wire`, `addon.config`, `addon.errors`.
"""
