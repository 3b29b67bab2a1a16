"""``ct2mri-node migrate-store``: copy the spool's SQLite job store into PostgreSQL.

A node that moves from one machine (SQLite in the spool) to several (``job_store.url``) keeps its
history: every job with its id, state, timings and routing decision, its deliveries, its
provenance and its dispatch row (priority, lease) is copied in one transaction, and the target's
job id sequence continues after the highest copied id. The target must hold no jobs (a second
run is refused, not merged). Stop the receivers and workers first: the receiver lock is taken,
so a node still receiving into the spool is refused.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError, SpoolError
from ..jobs.database import is_postgres_url, mask_url
from ..jobs.queue import JobDispatch
from ..jobs.store import JobStore
from ..receive.spool import Spool

log = logging.getLogger(__name__)

#: Copied in this order (deliveries, provenance and dispatch rows refer to jobs).
TABLES = ("jobs", "deliveries", "provenance", "job_dispatch")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "migrate-store",
        help="copy the spool's SQLite job store (jobs, deliveries, provenance, leases) into PostgreSQL",
        description="Copy every job record of the spool's jobs.sqlite3 into the PostgreSQL job store "
        "(--to, else job_store.url of the config), keeping job ids. Stop the node's receivers and "
        "workers first; then set job_store.url on every machine.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration (default: the embedded one)")
    parser.add_argument("--to", default=None, metavar="URL",
                        help="postgresql://USER@HOST:PORT/DB (default: job_store.url; the password comes from "
                        "job_store.password_env / password_file, or PGPASSWORD)")
    parser.set_defaults(func=run)


def copy_store(source: JobStore, target: JobStore) -> dict[str, int]:
    """Copy every row of :data:`TABLES` from ``source`` to an empty ``target``; rows per table."""
    JobDispatch(source)   # both sides get the dispatch table (an embedded node never made one)
    JobDispatch(target)
    with source.connect() as conn:
        present = source.db.tables(conn)
        data = {}
        for table in TABLES:
            if table not in present:
                data[table] = ([], [])
                continue
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # fixed table names
            columns = list(rows[0].keys()) if rows else []
            data[table] = (columns, [tuple(r) for r in rows])
    counts: dict[str, int] = {}
    with target.transaction() as conn:
        if conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]:
            raise SpoolError(f"the job store {target.path} already holds jobs; migrate-store copies into an "
                             "empty store only (nothing was copied)")
        for table in TABLES:
            columns, rows = data[table]
            wanted = [c for c in columns if c in target.db.columns(conn, table)]
            if rows:
                index = [columns.index(c) for c in wanted]
                marks = ", ".join("?" * len(wanted))
                conn.executemany(f"INSERT INTO {table} ({', '.join(wanted)}) VALUES ({marks})",
                                 [tuple(r[i] for i in index) for r in rows])
            counts[table] = len(rows)
        if target.db.dialect == "postgresql":   # new jobs continue after the copied ids
            conn.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'),"
                         " (SELECT COALESCE(MAX(id), 0) + 1 FROM jobs), false)")
    return counts


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    url = args.to or config.job_store.url
    if url is None or not is_postgres_url(url):
        raise ConfigError("give --to postgresql://USER@HOST:PORT/DB, or set job_store.url in the config")
    spool = Spool(config.spool_dir)
    if not spool.db_path.exists():
        raise SpoolError(f"no job database at {spool.db_path}; nothing to migrate")
    try:
        lock = spool.lock_receiver()
    except ConfigError:
        raise ConfigError(f"a ct2mri-node is receiving into the spool {spool.root}; stop it (and its workers) "
                          "before migrating its job store") from None
    try:
        password = config.job_store.password() if url == config.job_store.url else None
        target = JobStore(url, password, config.job_store.connect_timeout_s)
        counts = copy_store(JobStore(spool.db_path), target)
    finally:
        lock.release()
    log.info("job store copied from %s to %s: %s", spool.db_path, mask_url(url), counts)
    print(f"copied {counts['jobs']} jobs, {counts['deliveries']} deliveries, {counts['provenance']} provenance "
          f"records and {counts['job_dispatch']} dispatch rows from {spool.db_path} to {mask_url(url)}")
    print("now set job_store.url on every receiver and worker (the SQLite file is left as it was)")
    return 0
