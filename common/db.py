"""Statements that run for every job, prepared once per connection."""

import re

import psycopg
from django.db import connection


def prepared_cursor():
    """A cursor on Django's connection, in its current transaction, that binds parameters
    on the server. psycopg then prepares a statement once it has run a few times, and
    PostgreSQL reuses its plan rather than parsing and planning it again, which for the
    long statements of claims, finishes and placements costs as much as running them.
    Django's cursors bind on the client, so no statement of theirs is ever prepared. It
    is wrapped as Django wraps its own: errors are Django's, and queries are logged and
    counted alike."""
    connection.ensure_connection()
    cursor = psycopg.Cursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def sql_literal(value: str) -> str:
    """A constant of the code (a status, a reason) written into a prepared statement as a
    literal rather than bound, so that the statement's generic plan can prove a partial
    index's condition. Only for such constants: nothing a user gave."""
    if not re.fullmatch(r"[a-z_]*", value):
        raise ValueError(f"not a code constant: {value!r}")
    return f"'{value}'"


def sql_literals(values) -> str:
    """`sql_literal` of each, comma-separated, for an IN list."""
    return ", ".join(sql_literal(value) for value in values)


# What autovacuum counts as enough change to analyze a table again (its defaults).
ANALYZE_BASE_ROWS = 50
ANALYZE_FRACTION = 0.1

CHANGED_TABLES_SQL = """
SELECT c.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
 WHERE c.relname = ANY(%s)
   AND s.n_mod_since_analyze > %s + %s * greatest(c.reltuples, 0)
 ORDER BY c.relname
"""


def tables_analyze_when_changed(tables: list[str]) -> list[str]:
    """ANALYZE those of `tables` that have changed by autovacuum's own measure since
    their last analyze; returns their names. A table that grows fast (a new cluster's
    first burst, or any burst on a server running without autovacuum) otherwise keeps
    the statistics of when it was small, and the statements prepared on it keep plans
    that scan it whole. An ANALYZE has every session plan those statements again. A
    table that autovacuum (or another ANALYZE) holds is skipped, not waited for: the
    caller is the scheduler's loop."""
    with connection.cursor() as cursor:
        cursor.execute(CHANGED_TABLES_SQL, [tables, ANALYZE_BASE_ROWS, ANALYZE_FRACTION])
        changed = [name for (name,) in cursor.fetchall()]
        for name in changed:
            cursor.execute(f"ANALYZE (SKIP_LOCKED) {connection.ops.quote_name(name)}")
    return changed
