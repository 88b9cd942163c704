"""Persistent stores.

- `ledgers`            the ledger interface: open a writer or a reader for the configured store
- `ledger_schema`      the `requests` table described once: `LedgerRow`, the columns and their
                       types, the named migrations, their SQLite and PostgreSQL renderings
- `batch_writer`       the writer thread both ledgers share: queue, batches, flush, close, prune
- `sqlite_ledger`      the embedded SQLite ledger (WAL) and its writer
- `pgledger`           the PostgreSQL ledger's connection settings and its writer
- `pg_migrations`      the PostgreSQL migrations, applied under an advisory lock
- `pg_reader`          reads the PostgreSQL ledger (reports, admin, budget seed)
- `ledger_spool`       the on-disk spool the PostgreSQL writer fills while the server is down
- `reports`            `costs` / `explain` reports over ledger rows
- `benchmarks`         the benchmark DB: reads for the catalog and the CLI, the bundled file
- `benchmark_schema`   its named migrations, tables and safe opening
- `benchmark_records`  the rows refresh writes into it, and the writes
- `scorer`             the learned difficulty scorer's JSON artifact, read at config load

May import `addon.routing`, `addon.wire`, `addon.config`, `addon.errors`.
"""
