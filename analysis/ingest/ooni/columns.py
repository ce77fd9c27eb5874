"""Arrow columns built straight from records (issue 19): one Python list per field, filled by
reading each record's attribute, turned into an Arrow array per field; lists of records become
offsets plus the flattened records' own columns, recursively. No dict per row or per
observation is built (``Measurement.to_row`` + ``pa.Table.from_pylist`` spent most of an
import's time on those), and the values are the same: every leaf goes through the same Python
to Arrow conversion ``pa.array`` does for ``from_pylist``.

The field names of the Arrow struct types in probe/schema.py are the record classes' attribute
names, which is what makes this possible; a field the records lack is an error (AttributeError,
reported by the caller like any value that does not fit)."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import pyarrow as pa

_GETTERS: dict[pa.DataType, tuple[list[pa.Field], Any]] = {}


def _getter(typ: pa.DataType) -> tuple[list[pa.Field], Any]:
    """The struct's fields and one attrgetter that reads all of them from a record (a tuple)."""
    found = _GETTERS.get(typ)
    if found is None:
        fields = [typ.field(i) for i in range(typ.num_fields)]
        names = [f.name for f in fields]
        get = attrgetter(*names) if len(names) > 1 else (lambda v, _g=attrgetter(names[0]): (_g(v),))
        found = _GETTERS[typ] = (fields, get)
    return found


def _array(values: list[Any], typ: pa.DataType) -> pa.Array:
    if pa.types.is_struct(typ):
        return _struct(values, typ)
    if pa.types.is_list(typ):
        return _list(values, typ)
    return pa.array(values, type=typ)


def _struct(values: list[Any], typ: pa.StructType) -> pa.Array:
    fields, get = _getter(typ)
    if any(v is None for v in values):  # never from the converters; kept correct all the same
        present = [v for v in values if v is not None]
        dense = _struct(present, typ)
        indices = []
        k = 0
        for v in values:
            indices.append(None if v is None else k)
            k += v is not None
        return dense.take(pa.array(indices, type=pa.int64()))
    return pa.StructArray.from_arrays(_children(values, fields, get), fields=fields)


def _children(values: list[Any], fields: list[pa.Field], get: Any) -> list[pa.Array]:
    columns = list(zip(*map(get, values), strict=True)) if values else [() for _ in fields]
    return [_array(list(col), f.type) for col, f in zip(columns, fields, strict=True)]


def _list(values: list[Any], typ: pa.ListType) -> pa.Array:
    offsets = [0]
    flat: list[Any] = []
    end = 0
    nulls = False
    for v in values:
        if v is None:
            nulls = True
        else:
            flat.extend(v)
            end += len(v)
        offsets.append(end)
    child = _array(flat, typ.value_type)
    mask = pa.array([v is None for v in values], type=pa.bool_()) if nulls else None
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), child, type=typ, mask=mask)


def records_table(records: list[Any], schema: pa.Schema) -> pa.Table:
    """The table of ``schema``'s columns, each read from the records' attribute of that name."""
    fields, get = _getter(pa.struct(list(schema)))
    return pa.Table.from_arrays(_children(records, fields, get), schema=schema)
