#!/usr/bin/python3
"""A MessagePack peer written with another implementation (python3-msgpack),
for interop tests of the codec. Run it with Debian's /usr/bin/python3, which
has python3-msgpack (the pyenv python3 on PATH may not).

    /usr/bin/python3 spec/support/msgpack_peer.py encode > bytes
    /usr/bin/python3 spec/support/msgpack_peer.py decode < bytes

encode: writes ONE MessagePack value to stdout: a map (keys in this order)
whose values decode in Lua (codec_decode) to:

    key           Python value             Lua value after decoding
    "nil"         None                     absent (t["nil"] == nil)
    "true"        True                     true
    "false"       False                    false
    "zero"        0                        0            (integer)
    "one"         1                        1            (integer)
    "minus_one"   -1                       -1           (integer)
    "uint8"       255                      255          (integer)
    "int8"        -128                     -128         (integer)
    "uint16"      65535                    65535        (integer)
    "int16"       -32768                   -32768       (integer)
    "uint32"      4294967295               4294967295   (integer)
    "int32"       -2147483648              -2147483648  (integer)
    "int64_min"   -2**63                   math.mininteger
    "int64_max"   2**63 - 1                math.maxinteger
    "uint64_max"  2**64 - 1                2^64 = 1.8446744073709552e+19 (float: a
                                           uint64 above math.maxinteger becomes a float)
    "float"       1.5                      1.5          (float)
    "float_one"   1.0                      1.0          (float, math.type "float")
    "neg_zero"    -0.0                     -0.0         (float, 1/x == -math.huge)
    "inf"         inf                      math.huge
    "neg_inf"     -inf                     -math.huge
    "nan"         nan                      NaN          (x ~= x)
    "str"         "h\u00e9llo \u2713"       "h\xc3\xa9llo \xe2\x9c\x93" (the UTF-8 bytes)
    "empty_str"   ""                       ""
    "long_str"    "x" * 300 (str16)        string.rep("x", 300)
    "bin"         b"\x00\x01\xff"          "\0\1\255"
    "empty_bin"   b""                      ""
    "long_bin"    bytes(range(256)) * 2    every byte 0..255, twice (512 bytes)
    "array"       [1, "two", [3, [4]]]     {1, "two", {3, {4}}}
    "with_nil"    [1, None, 3]             {1, nil, 3}  (a table with a hole)
    "map"         {"a": 1, "b": {"c": [True, None]}}
                                           {a = 1, b = {c = {true, nil}}}
    "int_keys"    {1: "a", 2: "b", 10: "c"}
                                           {[1] = "a", [2] = "b", [10] = "c"}
    "empty_array" []                       {}
    "empty_map"   {}                       {}

decode: reads one MessagePack value from stdin and prints one line, a
canonical JSON-like rendering, so a test can compare it with a literal:

    nil -> null, booleans -> true / false, integers -> decimal (123, -5),
    floats -> Python repr (1.0, -0.0, 1e+300, inf, -inf, nan),
    str -> JSON string with \\u escapes ("h\\u00e9llo"),
    bin -> bin("00ff") (hex), arrays -> [a, b],
    maps -> {k: v, ...} with entries sorted by the rendering of the key,
    ext -> ext(type, "hex payload"), e.g. ext(3, "00000000") for a back-reference.

A Lua value encoded by codec_encode renders as: a sequence -> [...], any other
table -> {...} (an empty table is an empty map: {}), integers as integers,
floats always as floats (1.0), valid UTF-8 strings as "..." and other strings
as bin(...). Exit status 2 on bad usage or undecodable input.
"""

import json
import math
import sys

import msgpack


def values():
    return {
        "nil": None,
        "true": True,
        "false": False,
        "zero": 0,
        "one": 1,
        "minus_one": -1,
        "uint8": 255,
        "int8": -128,
        "uint16": 65535,
        "int16": -32768,
        "uint32": 4294967295,
        "int32": -2147483648,
        "int64_min": -2**63,
        "int64_max": 2**63 - 1,
        "uint64_max": 2**64 - 1,
        "float": 1.5,
        "float_one": 1.0,
        "neg_zero": -0.0,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "nan": math.nan,
        "str": "h\u00e9llo \u2713",
        "empty_str": "",
        "long_str": "x" * 300,
        "bin": b"\x00\x01\xff",
        "empty_bin": b"",
        "long_bin": bytes(range(256)) * 2,
        "array": [1, "two", [3, [4]]],
        "with_nil": [1, None, 3],
        "map": {"a": 1, "b": {"c": [True, None]}},
        "int_keys": {1: "a", 2: "b", 10: "c"},
        "empty_array": [],
        "empty_map": {},
    }


def render(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, (bytes, bytearray)):
        return 'bin("%s")' % bytes(v).hex()
    if isinstance(v, msgpack.ExtType):  # before tuple: ExtType is a namedtuple
        return 'ext(%d, "%s")' % (v.code, v.data.hex())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(render(x) for x in v) + "]"
    if isinstance(v, dict):
        items = sorted((render(k), render(x)) for k, x in v.items())
        return "{" + ", ".join("%s: %s" % kv for kv in items) + "}"
    raise TypeError("cannot render %r" % (v,))


def main(argv):
    if len(argv) != 2 or argv[1] not in ("encode", "decode"):
        sys.stderr.write("usage: msgpack_peer.py encode|decode\n")
        return 2
    if argv[1] == "encode":
        sys.stdout.buffer.write(msgpack.packb(values(), use_bin_type=True))
        sys.stdout.buffer.flush()
        return 0
    data = sys.stdin.buffer.read()
    try:
        # strict_map_key=False: Lua tables have integer (and other) keys.
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # any decode failure is a test failure
        sys.stderr.write("msgpack_peer: cannot decode: %s\n" % e)
        return 2
    sys.stdout.write(render(value) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
