"""Statements that run for every job, prepared once per connection."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from django.db import connection, models, transaction
from django.db.models.expressions import DatabaseDefault


def prepared_cursor():
    """A cursor on Django's connection, in its current transaction, that binds parameters
    on the server. psycopg then prepares a statement once it has run a few times, and
    PostgreSQL reuses its plan rather than parsing and planning it again, which for the
    long statements of claims, finishes and placements costs as much as running them.
    Django's cursors bind on the client, so no statement of theirs is ever prepared. It
    is wrapped as Django wraps its own: errors are Django's, and queries are logged and
    counted alike."""
    db = transaction.get_connection()  # the connection itself, not its thread-local proxy
    db.ensure_connection()
    cursor = psycopg.Cursor(db.connection)
    if db.queries_logged:
        return db.make_debug_cursor(cursor)
    return db.make_cursor(cursor)


def without_jit() -> None:
    """For the rest of the open transaction. Once the tables are large, the estimated cost
    of a statement that reads many rows (the metrics' figures, the tallies' folds, the
    usage report, whose `generate_series` the planner takes for a thousand rows a call)
    passes jit_above_cost, and compiling it takes longer (250 to 650 ms) than running
    it."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")


_INSERTS: dict[tuple, str] = {}


@dataclass(frozen=True)
class RowInsert:
    """The INSERT of a new model instance, `obj`, as `row_insert` runs it: `sql` (with
    `%s` placeholders for `values`) RETURNs `returned`, the primary key and the fields
    left to their database defaults, for `read_back`."""

    obj: models.Model
    sql: str
    values: list
    returned: list[models.Field]

    def read_back(self, row: Sequence) -> models.Model:
        """Set the returned values (the first of `row`) on `obj`, now saved; returns it."""
        obj, db = self.obj, transaction.get_connection()
        for field, value in zip(self.returned, row, strict=False):
            for converter in field.get_db_converters(db):
                value = converter(value, field, db)
            setattr(obj, field.attname, value)
        obj._state.adding = False
        obj._state.db = db.alias
        return obj


def row_insert_statement(obj: models.Model) -> RowInsert:
    """The INSERT of `obj`, a new instance, as `obj.save()` would write it (auto_now
    fields stamped on `obj`, each value prepared by its field, a field left to its
    database default read back with the id), its SQL made once per model and set of
    defaulted fields. Values only, or a field's database default: an expression (F(), a
    function) is refused. For a statement that does more than the insert, in the same
    round trip (`jobs.services.submission`); `row_insert` runs it alone."""
    meta = obj._meta
    db = transaction.get_connection()  # the connection itself, not its thread-local proxy
    given, defaulted, values = [], [], []
    for field in meta.local_concrete_fields:
        if field.generated or field is meta.auto_field:
            continue
        value = field.pre_save(obj, add=True)
        if isinstance(value, DatabaseDefault):
            defaulted.append(field)
        elif hasattr(value, "resolve_expression"):
            raise TypeError(f"row_insert takes values, not {value!r} for {field.name}")
        else:
            given.append(field)
            values.append(field.get_db_prep_save(value, connection=db))
    returned = [meta.pk, *defaulted]
    key = (type(obj), *(field.attname for field in defaulted))
    if key not in _INSERTS:
        quote = db.ops.quote_name
        _INSERTS[key] = (
            f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608 (the model's names)
            f"({', '.join(quote(field.column) for field in given)}) "
            f"VALUES ({', '.join(['%s'] * len(given))}) "
            f"RETURNING {', '.join(quote(field.column) for field in returned)}"
        )
    return RowInsert(obj, _INSERTS[key], values, returned)


def row_insert(obj: models.Model) -> models.Model:
    """Insert `obj`, a new instance, as `obj.save()` would (see `row_insert_statement`),
    as a prepared statement: the INSERT of a job names 45 columns, and Django compiling
    it anew for each submission cost the submitter more than the rest of the submission.
    Sends no signals (the project listens to none). Returns `obj`, now saved."""
    insert = row_insert_statement(obj)
    with prepared_cursor() as cursor:
        cursor.execute(insert.sql, insert.values)
        return insert.read_back(cursor.fetchone())


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
