"""Lookups Django lacks on PostgreSQL."""

from django.db.models import Lookup


class TrigramContains(Lookup):
    """`field__trigram_contains=text`: the field contains `text`, ignoring case, as
    `ILIKE '%text%'`, which a GIN index of `gin_trgm_ops` on the field answers (Django's
    `icontains` compares UPPER()s, which that index cannot)."""

    lookup_name = "trigram_contains"

    def get_db_prep_lookup(self, value, connection):
        return "%s", [f"%{connection.ops.prep_for_like_query(value)}%"]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} ILIKE {rhs}", [*lhs_params, *rhs_params]
