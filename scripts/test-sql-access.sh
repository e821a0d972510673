#!/usr/bin/env bash
# Tests the SQL access migration (storage/migrations/0006_sql_access.sql, docs/sql.md) on a PostgreSQL server:
#
#   scripts/test-sql-access.sh postgres://USER@HOST:PORT/DB [--bench]
#
# Creates a scratch database on that server, creates the three tables the migration reads (span_blocks,
# resources, trace_index, partitioned by day like the real schema), applies the migration in one transaction,
# inserts hand-encoded protobuf fixtures (python3, no protobuf library) and compares query results with the
# expected values; then feeds truncated, corrupted and random bytes to every decoder, which must not raise.
# --bench also times the decoders on a block of 500 spans with 10 string attributes each. The scratch
# database is dropped at the end. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:?usage: $0 POSTGRES_URL [--bench]}
bench=no
[[ ${2:-} == --bench ]] && bench=yes
migration=storage/migrations/0006_sql_access.sql
database=tracepost_sqlaccess_test_$$
work=$(mktemp -d)

# The URL of the scratch database: the server's, with its database name replaced.
url=$(python3 - "$server" "$database" <<'PY'
import sys, urllib.parse
parts = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(parts._replace(path="/" + sys.argv[2])))
PY
)

cleanup() {
    psql "$server" -qAtX -c "DROP DATABASE IF EXISTS $database" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
psql "$server" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database" >/dev/null

run() { PGTZ=UTC PGOPTIONS='-c jit=off' psql "$url" -qAtX -v ON_ERROR_STOP=1 -P null='<null>' "$@"; }

run <<'SQL'
CREATE TABLE span_blocks (
    block_id bigint NOT NULL, start_ns bigint NOT NULL, last_start_ns bigint NOT NULL, service text NOT NULL,
    cluster text, span_count integer NOT NULL, min_duration_ns bigint NOT NULL, max_duration_ns bigint NOT NULL,
    bloom bytea NOT NULL, spans bytea NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX ON span_blocks (block_id);
-- 2023-11-14 and 2023-11-15 (UTC), and the default partition.
CREATE TABLE span_blocks_p20231114 PARTITION OF span_blocks FOR VALUES FROM (1699920000000000000) TO (1700006400000000000);
CREATE TABLE span_blocks_p20231115 PARTITION OF span_blocks FOR VALUES FROM (1700006400000000000) TO (1700092800000000000);
CREATE TABLE span_blocks_default PARTITION OF span_blocks DEFAULT;
CREATE TABLE resources (
    resource_id bigint NOT NULL, day integer NOT NULL, service text NOT NULL, cluster text, body bytea NOT NULL,
    PRIMARY KEY (resource_id, day)
);
CREATE TABLE trace_index (
    trace_id uuid NOT NULL, start_ns bigint NOT NULL, block_id bigint NOT NULL, span_count integer NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX ON trace_index USING hash (trace_id);
CREATE TABLE trace_index_default PARTITION OF trace_index DEFAULT;
SQL

# The migration runs in one transaction, as the migrator applies it.
run --single-transaction -f "$migration"

# Fixtures: protobuf encoded by hand.
python3 - >"$work/fixtures.sql" <<'PY'
import random, struct

def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)

def key(field, wire_type): return varint(field << 3 | wire_type)
def ld(field, data):
    data = data.encode() if isinstance(data, str) else data
    return key(field, 2) + varint(len(data)) + data
def vint(field, v): return key(field, 0) + varint(v)
def fixed64(field, v): return key(field, 1) + struct.pack('<Q', v & ((1 << 64) - 1))
def fixed32(field, v): return key(field, 5) + struct.pack('<I', v)
def double(field, x): return key(field, 1) + struct.pack('<d', x)

# AnyValue
def s(x): return ld(1, x)
def boolean(x): return vint(2, 1 if x else 0)
def i(x): return vint(3, x)
def d(x): return double(4, x)
def arr(*values): return ld(5, b''.join(ld(1, v) for v in values))
def kvlist(*pairs): return ld(6, b''.join(ld(1, kv(k, v)) for k, v in pairs))
def by(x): return ld(7, x)
def kv(k, v=None): return ld(1, k) + (b'' if v is None else ld(2, v))
def attributes(field, *pairs): return b''.join(ld(field, kv(*p)) for p in pairs)

def hexlit(b): return "'\\x" + b.hex() + "'::bytea"

T1 = bytes.fromhex('5b8efff798038103d269b633813fc60c')
T2 = bytes.fromhex('0af7651916cd43dd8448eb211c80319c')
T3 = bytes.fromhex('33' * 16)
SA, SB, SC, SD = (bytes.fromhex(x) for x in ('0102030405060708', '1112131415161718', '3132333435363738', '2122232425262728'))
SE, SF, SG, SH = (bytes.fromhex(x) for x in ('00f067aa0ba902b7', '00f067aa0ba902b8', '00f067aa0ba902b9', '4444444444444444'))
A_START = 1700000000123456789

# Span A: a root span with every kind of attribute value, events, a link, a scope.
a_detail = (
    attributes(1,
        ('http.method', s('GET')), ('http.status_code', i(200)), ('retry', i(-5)), ('ratio', d(0.25)),
        ('cached', boolean(True)), ('payload', by(b'\x00\x01\xfe\xff')),
        ('tags', arr(s('a'), i(1), arr(boolean(False)), kvlist(('k', s('v'))))),
        ('meta', kvlist(('x', d(1.5)), ('nested', kvlist(('y', arr()))), ('dup', i(1)), ('dup', i(2)))),
        ('unicode', s('héllo ✓')), ('backslash', s('C:\\temp')), ('nan', d(float('nan'))),
        ('inf', d(float('-inf'))), ('big', i(9223372036854775807)), ('min', i(-9223372036854775808)),
        ('tiny', d(5e-324)), ('pi', d(3.141592653589793)), ('empty',), ('badutf8', s(b'\xc3\x28')),
        ('nul', s(b'a\x00b')), (b'\xff', s('bad key')), ('emptyany', b''))
    + vint(2, 3)
    + ld(3, fixed64(1, A_START + 10_000_000) + ld(2, 'cache miss')
            + attributes(3, ('key', s('user:1')), ('n', i(3))) + vint(4, 1))
    + ld(3, fixed64(1, A_START + 20_000_000) + ld(2, 'retry'))
    + ld(5, ld(1, T2) + ld(2, SE) + ld(3, 'k=v') + attributes(4, ('link.kind', s('follows'))) + fixed32(6, 1))
    + ld(7, 'congo=t61rcWkgMzE')
    + fixed32(8, 0x301)
    + ld(10, ld(1, 'io.opentelemetry.http') + ld(2, '1.2.3') + attributes(3, ('lib.attr', boolean(True))))
    + fixed64(12, A_START + 50_000_000))
span_a = (ld(1, T1) + ld(2, SA) + fixed64(4, A_START) + ld(5, 'GET /api/orders/{id}') + vint(6, 2)
          + fixed64(8, -42) + ld(9, a_detail) + ld(10, '/api/orders/{id}'))

# Span B: fields out of order, unknown fields of every wire type, a 20000-byte attribute, a detail whose
# last attribute is cut short (the attributes before it still count).
b_start = A_START + 5_000_000
b_detail = (fixed64(12, b_start + 20_000_000) + ld(9, 'upstream timeout')
            + ld(1, kv('db.system', s('postgresql')) + vint(30, 1))
            + attributes(1, ('long', s('x' * 20000)))
            + key(1, 2) + varint(50) + b'short')
span_b = (ld(9, b_detail) + fixed64(4, b_start) + ld(1, T1) + vint(15, 7) + ld(2, SB) + ld(3, SA)
          + fixed32(16, 5) + ld(99, 'junk') + ld(5, 'SELECT orders') + vint(6, 3) + vint(7, 2) + fixed64(8, -42)
          + ld(10, 'route') + fixed64(20, 1))

# Span C: its name's length runs past the end of the span: left out.
span_c = ld(1, T1) + ld(2, SC) + key(5, 2) + varint(100) + b'abc'

# Span D: a name that is not UTF-8, no detail, a resource that is not stored.
span_d = (ld(1, T1) + ld(2, SD) + ld(3, SA) + fixed64(4, A_START + 30_000_000) + ld(5, b'\xff\xfeoops')
          + vint(6, 1) + fixed64(8, 999))

block1 = ld(1, span_a) + ld(1, span_b) + ld(1, span_c) + ld(1, span_d)

# Block 2, the next day: nesting deeper than 64 levels, odd kinds and statuses, odd end times.
E_START = 1700006400000001000
deep_array = i(1)
deep_kvlist = i(1)
for _ in range(70):
    deep_array = arr(deep_array)
    deep_kvlist = kvlist(('a', deep_kvlist))
e_detail = attributes(1, ('deep_array', deep_array), ('deep_kvlist', deep_kvlist)) + fixed64(12, E_START + 1500)
span_e = (ld(1, T2) + ld(2, SE) + fixed64(4, E_START) + ld(5, 'consume order') + vint(6, 5) + vint(7, 1)
          + fixed64(8, 7) + ld(9, e_detail))
f_detail = ld(1, ld(2, s('nokey'))) + ld(9, b'\xc3\x28') + fixed64(12, E_START + 90)
span_f = (ld(1, T2) + ld(2, SF) + ld(3, SE) + fixed64(4, E_START + 100) + ld(5, 'weird') + vint(6, -1)
          + vint(7, 7) + fixed64(8, 7) + ld(9, f_detail))
span_g = (ld(1, T2) + ld(2, SG) + ld(3, SE) + fixed64(4, E_START + 1000) + ld(5, 'forever') + fixed64(8, 7)
          + ld(9, fixed64(12, (1 << 64) - 1)))
block2 = ld(1, span_e) + ld(1, span_f) + ld(1, span_g)

# Block 3: garbage (a truncated varint). Block 4: a span (with an empty parent: a root), then one cut short.
block3 = b'\x0a\xff\xff\xff'
span_h = ld(1, T3) + ld(2, SH) + ld(3, b'') + fixed64(4, 1700000001000000000) + ld(5, 'tail')
block4 = ld(1, span_h) + key(1, 2) + varint(500) + b'\x0a\x10'

blocks = [
    (101, A_START, A_START + 30_000_000, 'checkout', "'eu-1'", block1),
    (202, E_START, E_START + 1000, 'orders', 'NULL', block2),
    (303, 1700000000000000000, 1700000000000000000, 'checkout', 'NULL', block3),
    (404, 1700000001000000000, 1700000001000000000, 'checkout', 'NULL', block4),
]
for block_id, start, last, service, cluster, spans in blocks:
    print(f"INSERT INTO span_blocks VALUES ({block_id}, {start}, {last}, '{service}', {cluster}, 0, 0, 0, "
          f"'\\x'::bytea, {hexlit(spans)});")

checkout = (attributes(1, ('service.name', s('checkout')), ('k8s.pod.name', s('checkout-7d9f')), ('host.cpus', i(4)))
            + vint(2, 1) + ld(3, 'https://opentelemetry.io/schemas/1.21.0'))
orders = attributes(1, ('service.name', s('orders')))
print(f"INSERT INTO resources VALUES (-42, 19675, 'checkout', 'eu-1', {hexlit(checkout)}),"
      f" (-42, 19676, 'checkout', 'eu-1', {hexlit(checkout)}), (7, 19676, 'orders', NULL, {hexlit(orders)});")
print(f"INSERT INTO trace_index VALUES ('{T1.hex()}', {A_START}, 101, 4), ('{T2.hex()}', {E_START}, 202, 3),"
      f" ('{T3.hex()}', 1700000001000000000, 404, 1);")

# Inputs for the robustness checks: a block, a detail, 5000 nested arrays, random bytes.
rng = random.Random(7)
print("CREATE TABLE fuzz_input (kind text, bytes bytea);")
deep = i(1)
for _ in range(5000):
    deep = arr(deep)
print(f"INSERT INTO fuzz_input VALUES ('block', {hexlit(ld(1, span_a) + ld(1, span_d) + block2)}),"
      f" ('detail', {hexlit(a_detail)}), ('deep', {hexlit(attributes(1, ('deep', deep)))});")
for n in range(300):
    noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    print(f"INSERT INTO fuzz_input VALUES ('random', {hexlit(noise)});")

# UTF-8 validation against Python's strict decoder (RFC 3629): every 1- and 2-byte sequence, 3- and 4-byte
# sequences around each boundary, random mixes of valid and invalid pieces.
cases = [bytes([x]) for x in range(256)] + [bytes([x, y]) for x in range(256) for y in range(0, 256, 3)]
for lead in (0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xC0, 0xC1, 0xC2, 0xDF):
    for second in (0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0):
        for third in (0x7F, 0x80, 0xBF, 0xC0):
            cases.append(bytes([lead, second, third]))
            for fourth in (0x7F, 0x80, 0xBF, 0xC0):
                cases.append(bytes([lead, second, third, fourth]))
pieces = [b'a', b'\\', b'\\0', b'\xc3\xa9', b'\xe2\x9c\x93', b'\xf0\x9f\x98\x80', b'\xff', b'\x80', b'\x00', b'\xed\xa0\x80', b'\xc3']
for _ in range(3000):
    cases.append(b''.join(rng.choice(pieces) for _ in range(rng.randrange(1, 8))))
print("CREATE TABLE utf8_cases (bytes bytea, expected text);")
rows = []
for case in cases:
    try:
        text = case.decode('utf-8')
        expected = 'NULL' if '\x00' in text else "'" + text.replace("'", "''") + "'"
    except UnicodeDecodeError:
        expected = 'NULL'
    rows.append(f"({hexlit(case)}, {expected})")
print("INSERT INTO utf8_cases VALUES " + ",\n".join(rows) + ";")
PY
run -f "$work/fixtures.sql"

failures=0
# check NAME SQL EXPECTED: the query's output (psql -At, NULL as <null>, TimeZone UTC) must equal EXPECTED.
check() {
    local name=$1 sql=$2 expected=$3 actual
    if ! actual=$(run -c "$sql" 2>&1); then
        echo "FAIL $name: the query failed: $actual"
        failures=$((failures + 1))
    elif [[ $actual != "$expected" ]]; then
        echo "FAIL $name"
        diff <(echo "$expected") <(echo "$actual") | sed 's/^/    /' | head -40 || true
        failures=$((failures + 1))
    else
        echo "ok   $name"
    fi
}
# check_json NAME SQL JSON: the query's one jsonb value must equal JSON (as jsonb).
check_json() {
    local name=$1 sql=$2 expected=$3
    check "$name" "SELECT CASE WHEN x = \$expected\$$expected\$expected\$::jsonb THEN 'equal' ELSE coalesce(x::text, '<null>') END FROM ($sql) AS q(x)" equal
}

a=0102030405060708
check "the spans of every block, in order" \
    "SELECT trace_id, span_id, parent_span_id, service, cluster, name, kind, status_code, start_time, start_ns, end_ns,
            duration_ns, status_message, resource_id, block_id, block_start_ns, block_last_start_ns
     FROM tracepost_spans ORDER BY block_id, start_ns" \
"5b8efff798038103d269b633813fc60c|0102030405060708|<null>|checkout|eu-1|GET /api/orders/{id}|server|unset|2023-11-14 22:13:20.123456+00|1700000000123456789|1700000000173456789|50000000||-42|101|1700000000123456789|1700000000153456789
5b8efff798038103d269b633813fc60c|1112131415161718|0102030405060708|checkout|eu-1|SELECT orders|client|error|2023-11-14 22:13:20.128456+00|1700000000128456789|1700000000148456789|20000000|upstream timeout|-42|101|1700000000123456789|1700000000153456789
5b8efff798038103d269b633813fc60c|2122232425262728|0102030405060708|checkout|eu-1|<null>|internal|unset|2023-11-14 22:13:20.153456+00|1700000000153456789|0|0||999|101|1700000000123456789|1700000000153456789
0af7651916cd43dd8448eb211c80319c|00f067aa0ba902b7|<null>|orders|<null>|consume order|consumer|ok|2023-11-15 00:00:00.000001+00|1700006400000001000|1700006400000002500|1500||7|202|1700006400000001000|1700006400000002000
0af7651916cd43dd8448eb211c80319c|00f067aa0ba902b8|00f067aa0ba902b7|orders|<null>|weird|-1|7|2023-11-15 00:00:00.000001+00|1700006400000001100|1700006400000001090|0|<null>|7|202|1700006400000001000|1700006400000002000
0af7651916cd43dd8448eb211c80319c|00f067aa0ba902b9|00f067aa0ba902b7|orders|<null>|forever|unspecified|unset|2023-11-15 00:00:00.000002+00|1700006400000002000|-1|9223372036854775807||7|202|1700006400000001000|1700006400000002000
33333333333333333333333333333333|4444444444444444|<null>|checkout|<null>|tail|unspecified|unset|2023-11-14 22:13:21+00|1700000001000000000|0|0||0|404|1700000001000000000|1700000001000000000"

check "spans per block (garbage and truncated blocks: what decodes)" \
    "SELECT b.block_id, count(s.span_id) FROM span_blocks b LEFT JOIN LATERAL tracepost_block_spans(b.spans) s ON true
     GROUP BY 1 ORDER BY 1" \
"101|3
202|3
303|0
404|1"

a="(SELECT detail FROM tracepost_spans WHERE span_id = '0102030405060708')"
check_json "attributes: every AnyValue type, NaN/Infinity, int64 limits, bad UTF-8, absent and empty values" \
    "SELECT attributes FROM tracepost_spans WHERE span_id = '0102030405060708'" \
    '{"http.method": "GET", "http.status_code": 200, "retry": -5, "ratio": 0.25, "cached": true,
      "payload": "AAH+/w==", "tags": ["a", 1, [false], {"k": "v"}], "meta": {"x": 1.5, "nested": {"y": []}, "dup": 2},
      "unicode": "héllo ✓", "backslash": "C:\\temp", "nan": "NaN", "inf": "-Infinity",
      "big": 9223372036854775807, "min": -9223372036854775808, "tiny": 5e-324, "pi": 3.141592653589793,
      "empty": null, "badutf8": null, "nul": null, "emptyany": null}'

check "tracepost_attributes: stored order, SQL NULL for an unreadable value, bad keys left out" \
    "SELECT key || '=' || coalesce(value::text, '<sql null>') FROM tracepost_attributes($a) WHERE key <> 'tiny'" \
'http.method="GET"
http.status_code=200
retry=-5
ratio=0.25
cached=true
payload="AAH+/w=="
tags=["a", 1, [false], {"k": "v"}]
meta={"x": 1.5, "dup": 2, "nested": {"y": []}}
unicode="héllo ✓"
backslash="C:\\temp"
nan="NaN"
inf="-Infinity"
big=9223372036854775807
min=-9223372036854775808
pi=3.141592653589793
empty=null
badutf8=<sql null>
nul=<sql null>
emptyany=null'

check "int and double values are jsonb numbers" \
    "SELECT jsonb_typeof(attributes->'retry'), (attributes->>'retry')::bigint, jsonb_typeof(attributes->'tiny'),
            (attributes->>'tiny')::float8, (attributes->>'big')::numeric + 1, jsonb_typeof(attributes->'nan')
     FROM tracepost_spans WHERE span_id = '0102030405060708'" \
    "number|-5|number|5e-324|9223372036854775808|string"

check "a span's unknown fields, fields out of order, a long attribute, a detail cut short" \
    "SELECT attributes->>'db.system', length(attributes->>'long'), (SELECT count(*) FROM jsonb_object_keys(attributes))
     FROM tracepost_spans WHERE span_id = '1112131415161718'" \
    "postgresql|20000|2"

check_json "nesting deeper than 64 levels is null (arrays)" \
    "SELECT attributes->'deep_array' FROM tracepost_spans WHERE span_id = '00f067aa0ba902b7'" \
    "$(python3 -c 'print("[" * 65 + "null" + "]" * 65)')"
check_json "nesting deeper than 64 levels is null (kvlists)" \
    "SELECT attributes->'deep_kvlist' FROM tracepost_spans WHERE span_id = '00f067aa0ba902b7'" \
    "$(python3 -c 'print("{\"a\": " * 65 + "null" + "}" * 65)')"

check_json "a KeyValue without a key" \
    "SELECT attributes FROM tracepost_spans WHERE span_id = '00f067aa0ba902b8'" '{"": "nokey"}'
check_json "no detail: no attributes" \
    "SELECT attributes FROM tracepost_spans WHERE span_id = '2122232425262728'" '{}'

check "resource attributes (one row of several days; none for an unknown resource)" \
    "SELECT span_id, resource_attributes FROM tracepost_spans ORDER BY block_id, start_ns" \
'0102030405060708|{"host.cpus": 4, "k8s.pod.name": "checkout-7d9f", "service.name": "checkout"}
1112131415161718|{"host.cpus": 4, "k8s.pod.name": "checkout-7d9f", "service.name": "checkout"}
2122232425262728|<null>
00f067aa0ba902b7|{"service.name": "orders"}
00f067aa0ba902b8|{"service.name": "orders"}
00f067aa0ba902b9|{"service.name": "orders"}
4444444444444444|<null>'

check "events" \
    "SELECT e.* FROM tracepost_spans v, tracepost_events(v.detail) e WHERE v.span_id = '0102030405060708'" \
'1700000000133456789|2023-11-14 22:13:20.133456+00|cache miss|{"n": 3, "key": "user:1"}|1
1700000000143456789|2023-11-14 22:13:20.143456+00|retry|{}|0'

check "links" \
    "SELECT l.* FROM tracepost_spans v, tracepost_links(v.detail) l WHERE v.span_id = '0102030405060708'" \
    '0af7651916cd43dd8448eb211c80319c|00f067aa0ba902b7|k=v|{"link.kind": "follows"}|1|0'

check "span detail and scope" \
    "SELECT d.status_message, d.trace_state, d.flags, d.end_ns, d.original_name, d.scope_name, d.scope_version,
            length(d.scope), d.dropped_attributes_count, d.dropped_events_count, d.dropped_links_count,
            d.event_count, d.link_count, tracepost_attributes_object(d.scope, 3) FROM tracepost_spans v, tracepost_span_detail(v.detail) d
     WHERE v.span_id IN ('0102030405060708', '1112131415161718', '00f067aa0ba902b8') ORDER BY v.start_ns" \
"|congo=t61rcWkgMzE|769|1700000000173456789|<null>|io.opentelemetry.http|1.2.3|46|3|0|0|2|1|{\"lib.attr\": true}
upstream timeout||0|1700000000148456789|<null>|||0|0|0|0|0|0|{}
<null>||0|1700006400000001090|<null>|||0|0|0|0|0|0|{}"

check "resource body attributes and other fields" \
    "SELECT tracepost_attributes_object(body), (SELECT string_agg(field || ':' || wire_type || ':' || coalesce(int_value::text, convert_from(bytes_value, 'UTF8')), ' ')
            FROM tracepost_pb_fields(body) WHERE field <> 1)
     FROM resources WHERE resource_id = -42 AND day = 19675" \
    '{"host.cpus": 4, "k8s.pod.name": "checkout-7d9f", "service.name": "checkout"}|2:0:1 3:2:https://opentelemetry.io/schemas/1.21.0'

check "tracepost_trace_spans (with or without dashes)" \
    "SELECT span_id FROM tracepost_trace_spans('5b8efff7-9803-8103-d269-b633813fc60c') ORDER BY start_ns;
     SELECT count(*) FROM tracepost_trace_spans('0af7651916cd43dd8448eb211c80319c');
     SELECT count(*) FROM tracepost_trace_spans('00000000000000000000000000000000')" \
"0102030405060708
1112131415161718
2122232425262728
3
0"

check "tracepost_spans_between" \
    "SELECT span_id FROM tracepost_spans_between('2023-11-14 22:13:20.128456+00', '2023-11-15 00:00:00.000002+00')
     ORDER BY start_ns" \
"1112131415161718
2122232425262728
4444444444444444
00f067aa0ba902b7
00f067aa0ba902b8"

# check_plan NAME SQL SCANNED NOT_SCANNED: EXPLAIN of SQL must mention SCANNED and must not match NOT_SCANNED.
check_plan() {
    local name=$1 sql=$2 scanned=$3 not_scanned=$4 plan
    plan=$(run -c "EXPLAIN (COSTS OFF) $sql")
    if grep -q "$scanned" <<<"$plan" && ! grep -Eq "$not_scanned" <<<"$plan"; then
        echo "ok   $name"
    else
        echo "FAIL $name"
        sed 's/^/    /' <<<"$plan"
        failures=$((failures + 1))
    fi
}
check_plan "a filter on block_start_ns prunes partitions" \
    "SELECT span_id FROM tracepost_spans WHERE block_start_ns BETWEEN 1700006400000000000 AND 1700010000000000000" \
    span_blocks_p20231115 'span_blocks_(p20231114|default)'
check_plan "tracepost_spans_between prunes partitions" \
    "SELECT span_id FROM tracepost_spans_between('2023-11-15 00:00:00+00', '2023-11-15 01:00:00+00')" \
    span_blocks_p20231115 'span_blocks_(p20231114|default)'
check_plan "columns the query does not use are not decoded" \
    "SELECT span_id FROM tracepost_spans" \
    tracepost_block_spans 'tracepost_attributes_object|tracepost_span_detail|resources'

# Robustness: no input makes a decoder raise.
every_decoder="SELECT count(*), sum(length(coalesce(s.name, '')) + length(tracepost_attributes_object(s.detail)::text)
        + length(tracepost_span_detail(s.detail)::text)
        + (SELECT count(*) FROM tracepost_events(s.detail)) + (SELECT count(*) FROM tracepost_links(s.detail))
        + (SELECT count(*) FROM tracepost_attributes(s.detail, 3)))"
check "every prefix of a block decodes without error" \
    "SELECT count(*) > 0 FROM ($every_decoder FROM fuzz_input f, generate_series(0, length(f.bytes)) n,
        tracepost_block_spans(substring(f.bytes FROM 1 FOR n)) s WHERE f.kind = 'block') x" t
check "blocks with a changed byte decode without error" \
    "SELECT setseed(0.5); SELECT count(*) > 0 FROM ($every_decoder FROM fuzz_input f, generate_series(1, 3000) n,
        tracepost_block_spans(set_byte(f.bytes, (random() * (length(f.bytes) - 1))::integer,
                                       (random() * 255)::integer)) s WHERE f.kind = 'block') x" "
t"
check "every prefix of a detail, and changed bytes, decode without error" \
    "SELECT setseed(0.25); SELECT count(*) FROM (
        SELECT tracepost_attributes_object(b), tracepost_span_detail(b), (SELECT count(*) FROM tracepost_events(b)),
               (SELECT count(*) FROM tracepost_links(b)), (SELECT count(*) FROM tracepost_pb_fields(b)),
               tracepost_any_value(b)
        FROM (SELECT substring(bytes FROM 1 FOR n) AS b FROM fuzz_input, generate_series(0, length(bytes)) n
              WHERE kind = 'detail'
              UNION ALL
              SELECT set_byte(bytes, (random() * (length(bytes) - 1))::integer, (random() * 255)::integer)
              FROM fuzz_input, generate_series(1, 3000) WHERE kind = 'detail') d) x" "
$(run -c "SELECT length(bytes) + 1 + 3000 FROM fuzz_input WHERE kind = 'detail'")"
check "random bytes and 5000 nested arrays decode without error" \
    "SELECT count(*) FROM fuzz_input f LEFT JOIN LATERAL ($every_decoder FROM tracepost_block_spans(f.bytes) s) x ON true,
        LATERAL (SELECT tracepost_attributes_object(f.bytes), tracepost_span_detail(f.bytes), tracepost_any_value(f.bytes),
                        (SELECT count(*) FROM tracepost_events(f.bytes)), (SELECT count(*) FROM tracepost_links(f.bytes))) y" \
    "$(run -c 'SELECT count(*) FROM fuzz_input')"
check_json "5000 nested arrays: null below 64 levels" \
    "SELECT tracepost_attributes_object(bytes)->'deep' #> '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}'
     FROM fuzz_input WHERE kind = 'deep'" '[null]'
check "UTF-8 validation matches Python's strict decoder" \
    "SELECT count(*), count(*) FILTER (WHERE tracepost_pb_text(bytes) IS DISTINCT FROM expected) FROM utf8_cases" \
    "$(run -c 'SELECT count(*) FROM utf8_cases')|0"
check "timestamps at the ends of bigint" \
    "SELECT tracepost_ns_timestamptz(-9223372036854775808), tracepost_ns_timestamptz(9223372036854775807),
            tracepost_timestamptz_ns('infinity'), tracepost_timestamptz_ns('-infinity'),
            tracepost_timestamptz_ns('2023-11-14 22:13:20.123456+00'), tracepost_timestamptz_ns('9999-01-01')" \
    "1677-09-21 00:12:43.145225+00|2262-04-11 23:47:16.854775+00|9223372036854775807|-9223372036854775808|1700000000123456000|9223372036854775807"
check "day starts, also at the ends of bigint" \
    "SELECT tracepost_day_start_ns(1700000000123456789), tracepost_day_start_ns(-1), tracepost_day_start_ns(-9223372036854775808),
            tracepost_day_start_ns(9223372036854775807), count(*) FROM tracepost_spans_between('-infinity', 'infinity')" \
    "1699920000000000000|-86400000000000|-9223372036854775808|9223286400000000000|7"
check "durations as unsigned differences" \
    "SELECT tracepost_duration_ns(10, 5), tracepost_duration_ns(5, 10), tracepost_duration_ns(-10, -5),
            tracepost_duration_ns(-5, 10), tracepost_duration_ns(10, -5), tracepost_duration_ns(0, -9223372036854775808)" \
    "0|5|5|0|9223372036854775807|9223372036854775807"

if [[ $bench == yes ]]; then
    python3 - >"$work/bench.sql" <<'PY'
import os, struct
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
def ld(field, data):
    data = data.encode() if isinstance(data, str) else data
    return varint(field << 3 | 2) + varint(len(data)) + data
def fixed64(field, v): return varint(field << 3 | 1) + struct.pack('<Q', v)
spans = b''
for n in range(500):
    attrs = b''.join(ld(1, ld(1, f'attribute.key.{j}') + ld(2, ld(1, f'value-{n}-{j}-some-longer-text')))
                     for j in range(10))
    detail = attrs + fixed64(12, 1700000000000000000 + n * 1000 + 5000000)
    span = (ld(1, os.urandom(16)) + ld(2, os.urandom(8)) + ld(3, os.urandom(8))
            + fixed64(4, 1700000000000000000 + n * 1000) + ld(5, f'GET /api/orders/{n}') + varint(6 << 3) + varint(2)
            + fixed64(8, 12345) + ld(9, detail))
    spans += ld(1, span)
print(f"CREATE TABLE bench AS SELECT '\\x{spans.hex()}'::bytea AS spans;")
PY
    run -f "$work/bench.sql"
    run <<'SQL'
\timing on
\echo '500 spans, 10 string attributes each: tracepost_block_spans'
SELECT count(*) FROM bench, tracepost_block_spans(spans);
SELECT count(*) FROM bench, tracepost_block_spans(spans);
SELECT count(*) FROM bench, tracepost_block_spans(spans);
\echo '... and tracepost_attributes (rows)'
SELECT count(*) FROM bench, tracepost_block_spans(spans) s, tracepost_attributes(s.detail);
SELECT count(*) FROM bench, tracepost_block_spans(spans) s, tracepost_attributes(s.detail);
\echo '... and tracepost_attributes_object'
SELECT count(tracepost_attributes_object(s.detail)) FROM bench, tracepost_block_spans(spans) s;
SELECT count(tracepost_attributes_object(s.detail)) FROM bench, tracepost_block_spans(spans) s;
\echo '... and tracepost_span_detail'
SELECT count(tracepost_span_detail(s.detail)) FROM bench, tracepost_block_spans(spans) s;
SQL
fi

if ((failures > 0)); then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
