"""One Avro writer per schema, compiled once into nested closures: the collector's encoder for every record.

``fastavro.schemaless_writer`` walks the parsed schema on every call (named
types, union branches tried in turn, a ``BytesIO`` per record): for a ``Hit``
that is most of the encoding time. The schema does not change while the
collector runs, so the walk is done once here, at start-up, and what remains
per record is one function per field appending to a ``bytearray``. The bytes
are Avro binary, the same as fastavro's (the unit tests compare them on every
kind of hit); the Confluent header is the caller's (``producer.py``).

Only what the schemas the collector writes can contain is supported
(primitives, records, enums, arrays, maps, fixed, unions, logical types over
a primitive); any other schema is a ``ValueError`` at compile time, never a
wrong record. A value that does not fit (wrong type, text that is not valid
Unicode, a missing field without default) raises ``SerializationError``, as
fastavro's errors do through ``AvroEncoder.encode``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

from passerelle.schemas.errors import SerializationError

Writer = Callable[[bytearray, Any], None]
_MISSING = object()
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_PRIMITIVE_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (float, int),
    "double": (float, int),
    "string": (str,),
    "bytes": (bytes, bytearray),
}


def write_long(out: bytearray, value: int) -> None:
    """Zigzag varint (Avro ``int`` and ``long``)."""
    z = (value << 1) ^ (value >> 63)
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise TypeError(f"expected null, got {type(value).__name__}")


def _boolean(out: bytearray, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    out.append(1 if value else 0)


def _int(out: bytearray, value: Any) -> None:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    write_long(out, value)


def _double(out: bytearray, value: Any) -> None:
    out += _DOUBLE.pack(value)


def _float(out: bytearray, value: Any) -> None:
    out += _FLOAT.pack(value)


def _string(out: bytearray, value: Any) -> None:
    data = value.encode()  # a lone surrogate raises UnicodeEncodeError: the record cannot be stored
    write_long(out, len(data))
    out += data


def _bytes(out: bytearray, value: Any) -> None:
    write_long(out, len(value))
    out += value


def _string_lines(var: str) -> list[str]:
    """Statements appending the Avro string ``var`` (a local of the generated function) to ``out``."""
    return [
        f"data = {var}.encode()",  # a lone surrogate raises UnicodeEncodeError: the record cannot be stored
        "n = len(data)",
        "if n < 64:",
        "    out.append(n << 1)",  # the zigzag varint of a short length: one byte
        "else:",
        "    write_long(out, n)",
        "out += data",
    ]


_STRING = _string_lines("v")


def _no_default(name: str) -> Any:
    raise ValueError(f"field {name!r}: no value and no default")


_PRIMITIVES: dict[str, Writer] = {
    "null": _null,
    "boolean": _boolean,
    "int": _int,
    "long": _int,
    "float": _float,
    "double": _double,
    "string": _string,
    "bytes": _bytes,
}


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Writer] = {}
        self.kinds: dict[str, tuple[type, ...]] = {}
        self.exact: dict[str, Writer] = {}
        """Each record's writer for a dict that has every field (``value[name]``, no default looked up)."""
        self.rows: dict[str, Callable[..., None]] = {}
        """Each record's writer taking its fields as arguments, in the schema's order (``compile_row_writer``)."""

    def compile(self, schema: Any, namespace: str = "") -> tuple[Writer, tuple[type, ...]]:
        """The writer of ``schema`` and the Python types its values have (to choose a union branch)."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema], _PRIMITIVE_TYPES[schema]
            name = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            if name not in self.named and schema in self.named:
                name = schema
            if name not in self.named:
                raise ValueError(f"unknown Avro type {schema!r}")
            named = self.named
            return (lambda out, value: named[name](out, value)), self.kinds[name]
        if isinstance(schema, list):
            return self._union(schema, namespace)
        if not isinstance(schema, dict):
            raise ValueError(f"not an Avro schema: {schema!r}")
        kind = schema.get("type")
        if kind in _PRIMITIVES:  # {"type": "long", "logicalType": ...}: the primitive's bytes
            return self.compile(kind, namespace)
        if kind == "record" or kind == "error":
            return self._record(schema, namespace)
        if kind == "enum":
            return self._enum(schema, namespace)
        if kind == "array":
            return self._array(schema, namespace)
        if kind == "map":
            return self._map(schema, namespace)
        if kind == "fixed":
            return self._fixed(schema, namespace)
        if isinstance(kind, dict | list):
            return self.compile(kind, namespace)
        raise ValueError(f"Avro type {kind!r} not supported by the compiled writer")

    def _fullname(self, schema: Mapping[str, Any], namespace: str) -> tuple[str, str]:
        name = str(schema["name"])
        if "." in name:
            return name, name.rpartition(".")[0]
        space = str(schema.get("namespace", namespace) or "")
        return (f"{space}.{name}" if space else name), space

    def _record(self, schema: Mapping[str, Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        """A record's writer as one generated function: strings, optional strings, longs and booleans inline.

        Calling one closure per field costs more than the field's own bytes;
        the generated code reads each field once and appends its encoding in
        place, calling out only for nested records, arrays, maps and unions.
        """
        fullname, space = self._fullname(schema, namespace)
        self.kinds[fullname] = (dict,)
        named = self.named
        named[fullname] = lambda out, value: named[fullname](out, value)  # a reference to itself, for recursion
        env: dict[str, Any] = {"write_long": write_long, "MISSING": _MISSING, "_no_default": _no_default}
        lines = ["def record(out, value):", "    get = value.get"]
        exact = ["def record_exact(out, value):"]
        row = [f"def record_row(out, {', '.join(f'p{i}' for i in range(len(schema['fields'])))}):"]
        for i, field in enumerate(schema["fields"]):
            name, ftype = field["name"], field["type"]
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"invalid Avro field name {name!r} in {fullname}")
            env[f"default_{i}"] = field.get("default", _MISSING)
            lines += [f"    v = get({name!r}, MISSING)", "    if v is MISSING:",
                      f"        v = _no_default({name!r}) if default_{i} is MISSING else default_{i}"]  # fmt: skip
            body = ["    " + line for line in self._inline(ftype, space, env, i)]
            lines += body
            exact += [f"    v = value[{name!r}]", *body]
            row += [f"    v = p{i}", *body]
        exec("\n".join(lines), env)  # generated above; field names are checked Avro names, nothing else comes in
        exec("\n".join(exact), env)
        if schema["fields"]:
            exec("\n".join(row), env)
            self.rows[fullname] = env["record_row"]
        record: Writer = env["record"]
        named[fullname] = record
        self.exact[fullname] = env["record_exact"]
        return record, (dict,)

    def _inline(self, schema: Any, namespace: str, env: dict[str, Any], i: int) -> list[str]:
        """Statements appending the encoding of ``v`` (a value of ``schema``) to ``out``."""
        kind = schema.get("type") if isinstance(schema, dict) and "logicalType" in schema else schema
        if kind == "string":
            return _STRING
        if kind in ("long", "int"):  # write_long inlined
            return ["if v.__class__ is not int and not isinstance(v, int):",
                    "    raise TypeError(f'expected an integer, got {type(v).__name__}')",
                    "z = (v << 1) ^ (v >> 63)", "while z > 0x7F:", "    out.append((z & 0x7F) | 0x80)", "    z >>= 7",
                    "out.append(z)"]  # fmt: skip
        if isinstance(schema, dict) and schema.get("type") == "enum" and len(schema["symbols"]) < 64:
            fullname, _ = self._fullname(schema, namespace)
            self._enum(schema, namespace)  # registered by name, for later references
            env[f"enum_{i}"] = {symbol: position << 1 for position, symbol in enumerate(schema["symbols"])}
            env[f"enum_name_{i}"] = fullname
            return [f"p = enum_{i}.get(v)", "if p is None:",
                    f"    raise ValueError(f'{{v!r}} is not a symbol of enum {{enum_name_{i}}}')",
                    "out.append(p)"]  # fmt: skip  # the zigzag varint of a position under 64: one byte
        if kind == "boolean":
            return ["if v is True:", "    out.append(1)", "elif v is False:", "    out.append(0)", "else:",
                    "    raise TypeError(f'expected a boolean, got {type(v).__name__}')"]  # fmt: skip
        if isinstance(schema, dict) and schema.get("type") == "map" and schema.get("values") == "string":
            pairs = [*_string_lines("key"), *_string_lines("item")]
            return ["if v:", "    write_long(out, len(v))", "    for key, item in v.items():",
                    *["        " + line for line in pairs], "out.append(0)"]  # fmt: skip
        if isinstance(schema, list) and len(schema) == 2 and "null" in schema and "string" in schema:
            null, text = schema.index("null") << 1, schema.index("string") << 1
            return ["if v is None:", f"    out.append({null})", "else:", f"    out.append({text})",
                    *["    " + line for line in _STRING]]  # fmt: skip
        if isinstance(schema, list) and len(schema) == 2 and "null" in schema:  # ["null", X]: None inline
            null = schema.index("null")
            writer, _ = self.compile(schema[1 - null], namespace)
            env[f"write_{i}"] = writer
            return ["if v is None:", f"    out.append({null << 1})", "else:", f"    out.append({(1 - null) << 1})",
                    f"    write_{i}(out, v)"]  # fmt: skip
        writer, _ = self.compile(schema, namespace)
        env[f"write_{i}"] = writer
        return [f"write_{i}(out, v)"]

    def _enum(self, schema: Mapping[str, Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        fullname, _ = self._fullname(schema, namespace)
        index = {symbol: i for i, symbol in enumerate(schema["symbols"])}

        def enum(out: bytearray, value: Any) -> None:
            position = index.get(value)
            if position is None:
                raise ValueError(f"{value!r} is not a symbol of enum {fullname}")
            write_long(out, position)

        self.named[fullname], self.kinds[fullname] = enum, (str,)
        return enum, (str,)

    def _fixed(self, schema: Mapping[str, Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        fullname, _ = self._fullname(schema, namespace)
        size = int(schema["size"])

        def fixed(out: bytearray, value: Any) -> None:
            if len(value) != size:
                raise ValueError(f"fixed {fullname} needs {size} bytes, got {len(value)}")
            out += value

        self.named[fullname], self.kinds[fullname] = fixed, (bytes,)
        return fixed, (bytes,)

    def _array(self, schema: Mapping[str, Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        item_writer, _ = self.compile(schema["items"], namespace)

        def array(out: bytearray, value: Any) -> None:
            if value:
                write_long(out, len(value))
                for item in value:
                    item_writer(out, item)
            out.append(0)

        return array, (list, tuple)

    def _map(self, schema: Mapping[str, Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        value_writer, _ = self.compile(schema["values"], namespace)

        def map_(out: bytearray, value: Any) -> None:
            if value:
                write_long(out, len(value))
                for key, item in value.items():
                    _string(out, key)
                    value_writer(out, item)
            out.append(0)

        return map_, (dict,)

    def _union(self, branches: list[Any], namespace: str) -> tuple[Writer, tuple[type, ...]]:
        compiled = [self.compile(branch, namespace) for branch in branches]
        null_index = next((i for i, b in enumerate(branches) if b == "null"), None)
        others = [(i, w, kinds) for i, (w, kinds) in enumerate(compiled) if i != null_index]
        if null_index is not None and len(others) == 1:  # ["null", X]: the shape of every optional field
            (index, writer, _), null_byte = others[0], null_index  # zigzag of 0 and 1 are single bytes 0, 2
            tag = bytes([index << 1])

            def optional(out: bytearray, value: Any) -> None:
                if value is None:
                    out.append(null_byte << 1)
                else:
                    out += tag
                    writer(out, value)

            return optional, (type(None), *compiled[index][1])

        def union(out: bytearray, value: Any) -> None:
            if value is None and null_index is not None:
                write_long(out, null_index)
                return
            for index, writer, kinds in others:
                if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
                    write_long(out, index)
                    writer(out, value)
                    return
            raise TypeError(f"no branch of the union fits a {type(value).__name__}")

        return union, tuple(t for _, kinds in compiled for t in kinds)


def compile_writer(schema: str | Mapping[str, Any], prefix: bytes = b"") -> Callable[[Any], bytes]:
    """A function encoding one record of ``schema`` (text or parsed JSON) to Avro binary after ``prefix``.

    ``prefix`` is the Confluent header of the schema's id, or nothing.
    """
    raw = json.loads(schema) if isinstance(schema, str) else schema
    if raw == "string" or raw == {"type": "string"}:
        return _string_encoder(prefix)
    compiler = _Compiler()
    writer, _ = compiler.compile(raw)
    # A record dict that has every field (what the collector builds) takes the writer without defaults;
    # a missing field (KeyError) starts again with the general one, which knows them.
    first = compiler.exact.get(compiler._fullname(raw, "")[0]) if isinstance(raw, dict) and "name" in raw else None

    def encode(record: Any) -> bytes:
        out = bytearray(prefix)
        try:
            if first is None:
                writer(out, record)
            else:
                try:
                    first(out, record)
                except KeyError:
                    out = bytearray(prefix)
                    writer(out, record)
        except Exception as exc:
            raise SerializationError(f"cannot encode record: {exc}", stage="serialize") from exc
        return bytes(out)

    return encode


def compile_row_writer(
    schema: str | Mapping[str, Any], prefix: bytes = b""
) -> tuple[tuple[str, ...], Callable[[Any], bytes]]:
    """The field names of record ``schema``, in order, and a function encoding a row: a tuple of their values.

    For a caller that has a record's values at hand (the collector's fast
    path): the same bytes as ``compile_writer`` on the dict of those fields,
    without building the dict nor reading it back field by field (about 1 us
    of the 3 a ``Hit`` takes). The caller must give every field, in the
    schema's order: it checks the names it is given against its own.
    """
    raw = json.loads(schema) if isinstance(schema, str) else schema
    if not isinstance(raw, dict) or raw.get("type") not in ("record", "error") or not raw.get("fields"):
        raise ValueError("a row writer needs a record schema with fields")
    compiler = _Compiler()
    compiler.compile(raw)
    write_row = compiler.rows[compiler._fullname(raw, "")[0]]
    names = tuple(str(field["name"]) for field in raw["fields"])

    def encode(row: Any) -> bytes:
        out = bytearray(prefix)
        try:
            write_row(out, *row)
        except Exception as exc:
            raise SerializationError(f"cannot encode record: {exc}", stage="serialize") from exc
        return bytes(out)

    return names, encode


def _string_encoder(prefix: bytes) -> Callable[[Any], bytes]:
    """``compile_writer`` of the ``string`` schema (every key the collector writes): one concatenation per key.

    The prefix and the one-byte length of every short string are made once; the bytes are those of the
    general writer (the unit tests compare them).
    """
    heads = [prefix + bytes([n << 1]) for n in range(64)]  # the zigzag varint of n < 64 is the single byte 2n

    def encode(value: Any) -> bytes:
        try:
            data = value.encode()  # not a str, a lone surrogate: the record cannot be stored
        except Exception as exc:
            raise SerializationError(f"cannot encode record: {exc}", stage="serialize") from exc
        n = len(data)
        if n < 64:
            return heads[n] + data
        out = bytearray(prefix)
        write_long(out, n)
        out += data
        return bytes(out)

    return encode
