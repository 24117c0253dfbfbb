"""Statements that run for every job, prepared once per connection."""

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
