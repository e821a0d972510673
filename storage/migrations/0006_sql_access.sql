-- Reading stored spans with SQL (docs/sql.md): decoders, in PL/pgSQL and SQL, of the protobuf in
-- `span_blocks.spans`, `resources.body` and span details, and a view with one row per stored span. Slower than
-- the query API, but plain SQL, for ad hoc questions and exports. Every function is IMMUTABLE (or STABLE) and
-- PARALLEL SAFE, so none opens a subtransaction: nothing here uses an exception block.
--
-- Malformed bytes never raise: a message is read field by field until its end or its first malformed field
-- (a truncated varint or fixed value, a varint longer than 10 bytes, a length past the end of the enclosing
-- message, wire type 3, 4, 6 or 7), and what was read before counts. A span with a malformed field is left
-- out, and the block's later spans are still read unless the block's own framing is broken. A string that is
-- not valid UTF-8 reads as NULL. A field of an unexpected wire type is skipped as an unknown one; the last
-- occurrence of a non-repeated field wins, as in protobuf.
--
-- Positions below are 0-based byte offsets (get_byte's); `buf` is the message being read (a plain copy of the
-- argument), a nested message the range [q, e) of it, read in place.

-- The varint at `pos` (before `lim`) and the position after it, as {value, next}; NULL when it is truncated or
-- longer than 10 bytes. Bits beyond 64 are dropped, as protobuf decoders do.
CREATE FUNCTION tracepost_pb_varint(buf bytea, pos integer, lim integer) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    value bigint := 0;
    shift integer := 0;
    c integer;
BEGIN
    LOOP
        IF pos >= lim OR pos < 0 OR shift > 63 THEN
            RETURN NULL;
        END IF;
        c := get_byte(buf, pos);
        pos := pos + 1;
        value := value | ((c & 127)::bigint << shift);
        IF c < 128 THEN
            RETURN ARRAY[value, pos];
        END IF;
        shift := shift + 7;
    END LOOP;
END
$$;

-- The little-endian 8 bytes at `pos` as a bigint (fixed64 and sfixed64 alike; a fixed64 of 2^63 or more
-- reads as a negative number). The caller checks that the 8 bytes are there.
CREATE FUNCTION tracepost_pb_fixed64(buf bytea, pos integer) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT get_byte(buf, pos)::bigint
        | (get_byte(buf, pos + 1)::bigint << 8)
        | (get_byte(buf, pos + 2)::bigint << 16)
        | (get_byte(buf, pos + 3)::bigint << 24)
        | (get_byte(buf, pos + 4)::bigint << 32)
        | (get_byte(buf, pos + 5)::bigint << 40)
        | (get_byte(buf, pos + 6)::bigint << 48)
        | (get_byte(buf, pos + 7)::bigint << 56)
$$;

-- UTF-8 bytes as text; NULL when they are not valid UTF-8 (or hold a zero byte, which text cannot). No
-- exception block (it would make every caller parallel unsafe): the bytes are checked first, on their
-- encode(..., 'escape') form, which leaves bytes 1-127 as they are except the backslash (\\) and writes the
-- others as \ooo (octal). The common case, ASCII without backslashes, needs nothing else. A string that is not
-- ASCII is also NULL in a database whose encoding is neither UTF8 nor SQL_ASCII (convert_from could fail there;
-- a database's encoding never changes, hence IMMUTABLE).
CREATE FUNCTION tracepost_pb_text_slow(bytes bytea, escaped text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF strpos(replace(escaped, '\\', ''), '\') = 0 THEN
        RETURN replace(escaped, '\\', '\');     -- ASCII
    END IF;
    -- Valid UTF-8 as RFC 3629 (and PostgreSQL) define it: no overlong forms, surrogates or code points past
    -- U+10FFFF. 80-BF is octal 200-277.
    IF escaped !~ ('^(?:[^\\]|\\\\'
            || '|\\3(?:0[2-7]|[12][0-7]|3[0-7])\\2[0-7][0-7]'                 -- C2-DF 80-BF
            || '|\\340\\2[4-7][0-7]\\2[0-7][0-7]'                               -- E0 A0-BF 80-BF
            || '|\\3(?:4[1-7]|5[0-4]|5[67])\\2[0-7][0-7]\\2[0-7][0-7]'          -- E1-EC, EE-EF 80-BF 80-BF
            || '|\\355\\2[0-3][0-7]\\2[0-7][0-7]'                               -- ED 80-9F 80-BF
            || '|\\360\\2[2-7][0-7]\\2[0-7][0-7]\\2[0-7][0-7]'                  -- F0 90-BF 80-BF 80-BF
            || '|\\36[1-3]\\2[0-7][0-7]\\2[0-7][0-7]\\2[0-7][0-7]'              -- F1-F3 80-BF 80-BF 80-BF
            || '|\\364\\2[01][0-7]\\2[0-7][0-7]\\2[0-7][0-7]'                   -- F4 80-8F 80-BF 80-BF
            || ')*$') THEN
        RETURN NULL;
    END IF;
    IF getdatabaseencoding() NOT IN ('UTF8', 'SQL_ASCII') THEN
        RETURN NULL;
    END IF;
    RETURN convert_from(bytes, 'UTF8');
END
$$;

CREATE FUNCTION tracepost_pb_text(bytes bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t text := encode(bytes, 'escape');
BEGIN
    IF strpos(t, '\') = 0 THEN
        RETURN t;
    END IF;
    RETURN tracepost_pb_text_slow(bytes, t);
END
$$;

-- An IEEE 754 double from its 64 bits, as jsonb: a number, or "NaN", "Infinity", "-Infinity" (JSON has no
-- such numbers). Numbers print as float8 does (shortest exact form with the default extra_float_digits = 1).
CREATE FUNCTION tracepost_pb_double_jsonb(bits bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN (bits >> 52) & 2047 = 2047 THEN
            CASE WHEN bits & 4503599627370495 <> 0 THEN '"NaN"'::jsonb
                 WHEN bits < 0 THEN '"-Infinity"'::jsonb
                 ELSE '"Infinity"'::jsonb END
        ELSE to_jsonb(
            CASE WHEN bits < 0 THEN -1::float8 ELSE 1::float8 END
            * CASE WHEN (bits >> 52) & 2047 = 0
                   -- subnormal (or zero): mantissa * 2^-1074
                   THEN (bits & 4503599627370495)::float8 * power(2::float8, -1074)
                   ELSE (1::float8 + (bits & 4503599627370495)::float8 / 4503599627370496::float8)
                        * power(2::float8, ((bits >> 52) & 2047)::integer - 1023)
              END)
    END
$$;

-- A KeyValue list as a jsonb object: the last of duplicate keys wins, a value that cannot be read is null.
CREATE FUNCTION tracepost_kv_object(keys text[], vals jsonb[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 200 AS $$
    SELECT coalesce(jsonb_object_agg(u.key, coalesce(u.value, 'null'::jsonb) ORDER BY u.ord), '{}'::jsonb)
    FROM unnest(keys, vals) WITH ORDINALITY AS u(key, value, ord)
$$;

-- An AnyValue message as jsonb: strings as strings, ints as numbers (exact), doubles as numbers ("NaN",
-- "Infinity" and "-Infinity" as strings), bools, bytes as a base64 string, arrays as arrays and kvlists as
-- objects, recursively. An empty AnyValue is JSON null. SQL NULL for a value that cannot be read: a string
-- that is not valid UTF-8, nesting deeper than 64 levels (`depth` counts them), no value before a malformed
-- field. Inside an array or kvlist such a value is JSON null.
CREATE FUNCTION tracepost_any_value(value bytea, depth integer DEFAULT 0) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 200 AS $$
DECLARE
    buf bytea := value || '\x'::bytea;
    n integer := length(buf);
    q integer := 0;
    c integer;
    a bigint[];
    tag bigint;
    len bigint;
    t text;
    result jsonb := 'null';
    elements jsonb[];
    l record;
    r integer;
    e integer;
BEGIN
    IF depth > 64 THEN
        RETURN NULL;
    END IF;
    WHILE q < n LOOP
        c := get_byte(buf, q);
        IF c < 128 THEN tag := c; q := q + 1;
        ELSE a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; tag := a[1]; q := a[2]::integer;
        END IF;
        CASE tag & 7
        WHEN 0 THEN
            a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; q := a[2]::integer;
            IF tag = 16 THEN        -- bool_value
                result := to_jsonb(a[1] <> 0);
            ELSIF tag = 24 THEN     -- int_value
                result := to_jsonb(a[1]);
            END IF;
        WHEN 1 THEN
            EXIT WHEN n - q < 8;
            IF tag = 33 THEN        -- double_value
                result := tracepost_pb_double_jsonb(tracepost_pb_fixed64(buf, q));
            END IF;
            q := q + 8;
        WHEN 5 THEN
            EXIT WHEN n - q < 4;
            q := q + 4;
        WHEN 2 THEN
            a := tracepost_pb_varint(buf, q, n);
            EXIT WHEN a IS NULL OR a[1] < 0 OR a[1] > n - a[2];
            q := a[2]::integer;
            e := q + a[1]::integer;
            IF tag = 10 THEN        -- string_value
                t := encode(substring(buf FROM q + 1 FOR e - q), 'escape');
                IF strpos(t, '\') > 0 THEN t := tracepost_pb_text_slow(substring(buf FROM q + 1 FOR e - q), t); END IF;
                result := to_jsonb(t);
            ELSIF tag = 58 THEN     -- bytes_value
                result := to_jsonb(translate(encode(substring(buf FROM q + 1 FOR e - q), 'base64'), E'\n', ''));
            ELSIF tag = 42 THEN     -- array_value: repeated AnyValue values = 1
                elements := '{}';
                r := q;
                WHILE r < e LOOP
                    c := get_byte(buf, r);
                    IF c < 128 THEN tag := c; r := r + 1;
                    ELSE a := tracepost_pb_varint(buf, r, e); EXIT WHEN a IS NULL; tag := a[1]; r := a[2]::integer;
                    END IF;
                    CASE tag & 7
                    WHEN 2 THEN
                        a := tracepost_pb_varint(buf, r, e);
                        EXIT WHEN a IS NULL OR a[1] < 0 OR a[1] > e - a[2];
                        r := a[2]::integer;
                        IF tag = 10 THEN
                            elements := array_append(elements, coalesce(
                                tracepost_any_value(substring(buf FROM r + 1 FOR a[1]::integer), depth + 1),
                                'null'::jsonb));
                        END IF;
                        r := r + a[1]::integer;
                    WHEN 0 THEN
                        a := tracepost_pb_varint(buf, r, e); EXIT WHEN a IS NULL; r := a[2]::integer;
                    WHEN 1 THEN
                        EXIT WHEN e - r < 8; r := r + 8;
                    WHEN 5 THEN
                        EXIT WHEN e - r < 4; r := r + 4;
                    ELSE
                        EXIT;
                    END CASE;
                END LOOP;
                result := to_jsonb(elements);
            ELSIF tag = 50 THEN     -- kvlist_value: repeated KeyValue values = 1
                l := tracepost_kv_list(substring(buf FROM q + 1 FOR e - q), 1, depth + 1);
                result := tracepost_kv_object(l.keys, l.vals);
            END IF;
            q := e;
        ELSE
            EXIT;
        END CASE;
    END LOOP;
    RETURN result;
END
$$;

-- The KeyValue list in field `field` of `message`, in order, as two arrays: keys and values (values as
-- tracepost_any_value reads them, at nesting level `depth`). A key that is not valid UTF-8 leaves its pair
-- out; an absent key reads as '', an absent value as JSON null.
CREATE FUNCTION tracepost_kv_list(message bytea, field integer, depth integer, OUT keys text[], OUT vals jsonb[])
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 2000 AS $$
DECLARE
    buf bytea := message || '\x'::bytea;
    n integer := length(buf);
    q integer := 0;
    c integer;
    a bigint[];
    tag bigint;
    len bigint;
    wanted bigint := (field::bigint << 3) | 2;
    e integer;
    r integer;
    ks integer;
    ke integer;
    vs integer;
    ve integer;
    t text;
    v jsonb;
    nested boolean;
BEGIN
    keys := '{}';
    vals := '{}';
    WHILE q < n LOOP
        c := get_byte(buf, q);
        IF c < 128 THEN tag := c; q := q + 1;
        ELSE a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; tag := a[1]; q := a[2]::integer;
        END IF;
        CASE tag & 7
        WHEN 2 THEN
            EXIT WHEN q >= n;
            c := get_byte(buf, q);
            IF c < 128 THEN len := c; q := q + 1;
            ELSE a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; len := a[1]; q := a[2]::integer;
            END IF;
            EXIT WHEN len < 0 OR len > n - q;
            e := q + len::integer;
            -- The common case, in fewer steps: a string key and a string value, in this order, each length one
            -- byte (as the whole KeyValue's is): 0a KL key 12 VL 0a SL string. (CASE, not AND, orders the
            -- checks: no get_byte past the KeyValue.)
            IF tag = wanted AND (CASE WHEN depth <= 64 AND e - q BETWEEN 6 AND 127 THEN
                   CASE WHEN get_byte(buf, q + 1) <= e - q - 6 THEN
                            get_byte(buf, q) = 10
                        AND get_byte(buf, q + 2 + get_byte(buf, q + 1)) = 18
                        AND get_byte(buf, q + 3 + get_byte(buf, q + 1)) = e - q - 4 - get_byte(buf, q + 1)
                        AND get_byte(buf, q + 4 + get_byte(buf, q + 1)) = 10
                        AND get_byte(buf, q + 5 + get_byte(buf, q + 1)) = e - q - 6 - get_byte(buf, q + 1)
                   ELSE false END
               ELSE false END) THEN
                ks := q + 2;
                ke := ks + get_byte(buf, q + 1);
                t := encode(substring(buf FROM ks + 1 FOR ke - ks), 'escape');
                IF strpos(t, '\') > 0 THEN t := tracepost_pb_text_slow(substring(buf FROM ks + 1 FOR ke - ks), t); END IF;
                IF t IS NOT NULL THEN
                    keys := array_append(keys, t);
                    t := encode(substring(buf FROM ke + 5 FOR e - ke - 4), 'escape');
                    IF strpos(t, '\') > 0 THEN t := tracepost_pb_text_slow(substring(buf FROM ke + 5 FOR e - ke - 4), t); END IF;
                    vals := array_append(vals, to_jsonb(t));
                END IF;
            ELSIF tag = wanted THEN
                -- KeyValue in [q, e): string key = 1; AnyValue value = 2
                ks := NULL;
                vs := 0;
                ve := 0;
                r := q;
                WHILE r < e LOOP
                    c := get_byte(buf, r);
                    IF c < 128 THEN tag := c; r := r + 1;
                    ELSE a := tracepost_pb_varint(buf, r, e); EXIT WHEN a IS NULL; tag := a[1]; r := a[2]::integer;
                    END IF;
                    CASE tag & 7
                    WHEN 2 THEN
                        EXIT WHEN r >= e;
                        c := get_byte(buf, r);
                        IF c < 128 THEN len := c; r := r + 1;
                        ELSE a := tracepost_pb_varint(buf, r, e); EXIT WHEN a IS NULL; len := a[1]; r := a[2]::integer;
                        END IF;
                        EXIT WHEN len < 0 OR len > e - r;
                        IF tag = 10 THEN ks := r; ke := r + len::integer;
                        ELSIF tag = 18 THEN vs := r; ve := r + len::integer;
                        END IF;
                        r := r + len::integer;
                    WHEN 0 THEN
                        a := tracepost_pb_varint(buf, r, e); EXIT WHEN a IS NULL; r := a[2]::integer;
                    WHEN 1 THEN
                        EXIT WHEN e - r < 8; r := r + 8;
                    WHEN 5 THEN
                        EXIT WHEN e - r < 4; r := r + 4;
                    ELSE
                        EXIT;
                    END CASE;
                END LOOP;
                IF ks IS NULL THEN
                    t := '';
                ELSE
                    t := encode(substring(buf FROM ks + 1 FOR ke - ks), 'escape');
                    IF strpos(t, '\') > 0 THEN t := tracepost_pb_text_slow(substring(buf FROM ks + 1 FOR ke - ks), t); END IF;
                END IF;
                IF t IS NOT NULL THEN
                    keys := array_append(keys, t);
                    v := 'null';
                    nested := false;
                    -- AnyValue in [vs, ve): scalars here, arrays and kvlists by tracepost_any_value
                    r := vs;
                    WHILE r < ve LOOP
                        c := get_byte(buf, r);
                        IF c < 128 THEN tag := c; r := r + 1;
                        ELSE a := tracepost_pb_varint(buf, r, ve); EXIT WHEN a IS NULL; tag := a[1]; r := a[2]::integer;
                        END IF;
                        CASE tag & 7
                        WHEN 2 THEN
                            EXIT WHEN r >= ve;
                            c := get_byte(buf, r);
                            IF c < 128 THEN len := c; r := r + 1;
                            ELSE a := tracepost_pb_varint(buf, r, ve); EXIT WHEN a IS NULL; len := a[1]; r := a[2]::integer;
                            END IF;
                            EXIT WHEN len < 0 OR len > ve - r;
                            IF tag = 10 THEN        -- string_value
                                t := encode(substring(buf FROM r + 1 FOR len::integer), 'escape');
                                IF strpos(t, '\') > 0 THEN
                                    t := tracepost_pb_text_slow(substring(buf FROM r + 1 FOR len::integer), t);
                                END IF;
                                v := to_jsonb(t);
                                nested := false;
                            ELSIF tag = 58 THEN     -- bytes_value
                                v := to_jsonb(translate(encode(substring(buf FROM r + 1 FOR len::integer), 'base64'),
                                                        E'\n', ''));
                                nested := false;
                            ELSIF tag = 42 OR tag = 50 THEN
                                nested := true;
                            END IF;
                            r := r + len::integer;
                        WHEN 0 THEN
                            a := tracepost_pb_varint(buf, r, ve); EXIT WHEN a IS NULL; r := a[2]::integer;
                            IF tag = 16 THEN v := to_jsonb(a[1] <> 0); nested := false;
                            ELSIF tag = 24 THEN v := to_jsonb(a[1]); nested := false;
                            END IF;
                        WHEN 1 THEN
                            EXIT WHEN ve - r < 8;
                            IF tag = 33 THEN v := tracepost_pb_double_jsonb(tracepost_pb_fixed64(buf, r)); nested := false; END IF;
                            r := r + 8;
                        WHEN 5 THEN
                            EXIT WHEN ve - r < 4; r := r + 4;
                        ELSE
                            EXIT;
                        END CASE;
                    END LOOP;
                    IF nested THEN
                        v := tracepost_any_value(substring(buf FROM vs + 1 FOR ve - vs), depth);
                    ELSIF depth > 64 THEN
                        v := NULL;
                    END IF;
                    vals := array_append(vals, v);
                END IF;
            END IF;
            q := e;
        WHEN 0 THEN
            a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; q := a[2]::integer;
        WHEN 1 THEN
            EXIT WHEN n - q < 8; q := q + 8;
        WHEN 5 THEN
            EXIT WHEN n - q < 4; q := q + 4;
        ELSE
            EXIT;
        END CASE;
    END LOOP;
END
$$;

-- The KeyValue list in field `field` of any message (1 in SpanDetail, Resource and KeyValueList; 3 in Scope and
-- Event; 4 in Link), in order, as (key, value) rows; value as tracepost_any_value reads it (SQL NULL when it
-- cannot be read). A key that is not valid UTF-8 leaves its row out; an absent key reads as '', an absent
-- value as JSON null.
CREATE FUNCTION tracepost_attributes(message bytea, field integer DEFAULT 1)
RETURNS TABLE (key text, value jsonb)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT u.key, u.value
    FROM tracepost_kv_list(message, field, 0) AS l
    CROSS JOIN LATERAL unnest(l.keys, l.vals) AS u(key, value)
$$;

-- The same as one jsonb object (the last of duplicate keys wins; a value that cannot be read is JSON null);
-- '{}' when there is none.
CREATE FUNCTION tracepost_attributes_object(message bytea, field integer DEFAULT 1) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 2500 AS $$
DECLARE
    l record;
BEGIN
    l := tracepost_kv_list(message, field, 0);
    RETURN tracepost_kv_object(l.keys, l.vals);
END
$$;

-- The spans of a `span_blocks.spans` value (a SpanBlock), in stored order. `end_ns` is the detail's
-- end_time_unix_nano (0 when absent), `detail` the span's encoded SpanDetail ('\x' when absent: read it with
-- tracepost_attributes, tracepost_span_detail, tracepost_events, tracepost_links). parent_span_id is NULL for a
-- root span. kind and status_code are NULL when they do not fit a smallint. A span with a malformed field is left out; decoding stops at a
-- malformed field of the block itself.
CREATE FUNCTION tracepost_block_spans(spans bytea)
RETURNS TABLE (trace_id bytea, span_id bytea, parent_span_id bytea, start_ns bigint, end_ns bigint, name text,
               kind smallint, status_code smallint, resource_id bigint, detail bytea)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 100000 ROWS 500 AS $$
DECLARE
    -- A copy, detoasted once: get_byte on the (compressed) argument would decompress it at every call.
    buf bytea := spans || '\x'::bytea;
    n integer := length(buf);
    p integer := 0;
    q integer;
    e integer;
    c integer;
    a bigint[];
    tag bigint;
    len bigint;
    v bigint;
    good boolean;
    ds integer;
    de integer;
BEGIN
    WHILE p < n LOOP
        -- SpanBlock: repeated BlockSpan spans = 1
        c := get_byte(buf, p);
        IF c < 128 THEN tag := c; p := p + 1;
        ELSE a := tracepost_pb_varint(buf, p, n); EXIT WHEN a IS NULL; tag := a[1]; p := a[2]::integer;
        END IF;
        CASE tag & 7
        WHEN 2 THEN
            EXIT WHEN p >= n;
            c := get_byte(buf, p);
            IF c < 128 THEN len := c; p := p + 1;
            ELSE a := tracepost_pb_varint(buf, p, n); EXIT WHEN a IS NULL; len := a[1]; p := a[2]::integer;
            END IF;
            EXIT WHEN len < 0 OR len > n - p;
            q := p;
            e := p + len::integer;
            p := e;
            CONTINUE WHEN tag <> 10;
        WHEN 0 THEN
            a := tracepost_pb_varint(buf, p, n); EXIT WHEN a IS NULL; p := a[2]::integer;
            CONTINUE;
        WHEN 1 THEN
            EXIT WHEN n - p < 8; p := p + 8;
            CONTINUE;
        WHEN 5 THEN
            EXIT WHEN n - p < 4; p := p + 4;
            CONTINUE;
        ELSE
            EXIT;
        END CASE;

        -- BlockSpan in [q, e)
        trace_id := NULL; span_id := NULL; parent_span_id := NULL; start_ns := 0; end_ns := 0;
        name := ''; kind := 0; status_code := 0; resource_id := 0; detail := '\x';
        ds := NULL;
        good := true;
        WHILE q < e LOOP
            c := get_byte(buf, q);
            IF c < 128 THEN tag := c; q := q + 1;
            ELSE a := tracepost_pb_varint(buf, q, e); IF a IS NULL THEN good := false; EXIT; END IF;
                 tag := a[1]; q := a[2]::integer;
            END IF;
            CASE tag & 7
            WHEN 2 THEN
                IF q >= e THEN good := false; EXIT; END IF;
                c := get_byte(buf, q);
                IF c < 128 THEN len := c; q := q + 1;
                ELSE a := tracepost_pb_varint(buf, q, e); IF a IS NULL THEN good := false; EXIT; END IF;
                     len := a[1]; q := a[2]::integer;
                END IF;
                IF len < 0 OR len > e - q THEN good := false; EXIT; END IF;
                CASE tag
                WHEN 10 THEN trace_id := substring(buf FROM q + 1 FOR len::integer);
                WHEN 18 THEN span_id := substring(buf FROM q + 1 FOR len::integer);
                WHEN 26 THEN parent_span_id := substring(buf FROM q + 1 FOR len::integer);
                WHEN 42 THEN
                    name := encode(substring(buf FROM q + 1 FOR len::integer), 'escape');
                    IF strpos(name, '\') > 0 THEN
                        name := tracepost_pb_text_slow(substring(buf FROM q + 1 FOR len::integer), name);
                    END IF;
                WHEN 74 THEN ds := q; de := q + len::integer;
                ELSE NULL;
                END CASE;
                q := q + len::integer;
            WHEN 0 THEN
                IF q >= e THEN good := false; EXIT; END IF;
                c := get_byte(buf, q);
                IF c < 128 THEN v := c; q := q + 1;
                ELSE a := tracepost_pb_varint(buf, q, e); IF a IS NULL THEN good := false; EXIT; END IF;
                     v := a[1]; q := a[2]::integer;
                END IF;
                IF tag = 48 OR tag = 56 THEN
                    -- int32: the low 32 bits, signed; NULL beyond smallint
                    v := v & 4294967295;
                    IF v >= 2147483648 THEN v := v - 4294967296; END IF;
                    IF v < -32768 OR v > 32767 THEN v := NULL; END IF;
                    IF tag = 48 THEN kind := v; ELSE status_code := v; END IF;
                END IF;
            WHEN 1 THEN
                IF e - q < 8 THEN good := false; EXIT; END IF;
                IF tag = 33 THEN start_ns := tracepost_pb_fixed64(buf, q);
                ELSIF tag = 65 THEN resource_id := tracepost_pb_fixed64(buf, q);
                END IF;
                q := q + 8;
            WHEN 5 THEN
                IF e - q < 4 THEN good := false; EXIT; END IF;
                q := q + 4;
            ELSE
                good := false; EXIT;
            END CASE;
        END LOOP;
        CONTINUE WHEN NOT good;
        IF parent_span_id = '\x' THEN
            parent_span_id := NULL;         -- an empty parent is a root span's too
        END IF;

        IF ds IS NOT NULL THEN
            detail := substring(buf FROM ds + 1 FOR de - ds);
            -- SpanDetail: fixed64 end_time_unix_nano = 12 (a malformed detail: what was read before it)
            q := ds;
            WHILE q < de LOOP
                c := get_byte(buf, q);
                IF c < 128 THEN tag := c; q := q + 1;
                ELSE a := tracepost_pb_varint(buf, q, de); EXIT WHEN a IS NULL; tag := a[1]; q := a[2]::integer;
                END IF;
                CASE tag & 7
                WHEN 2 THEN
                    EXIT WHEN q >= de;
                    c := get_byte(buf, q);
                    IF c < 128 THEN q := q + 1 + c;
                    ELSE a := tracepost_pb_varint(buf, q, de); EXIT WHEN a IS NULL OR a[1] < 0 OR a[1] > de - a[2];
                         q := (a[2] + a[1])::integer;
                    END IF;
                WHEN 1 THEN
                    EXIT WHEN de - q < 8;
                    IF tag = 97 THEN end_ns := tracepost_pb_fixed64(buf, q); END IF;
                    q := q + 8;
                WHEN 0 THEN
                    a := tracepost_pb_varint(buf, q, de); EXIT WHEN a IS NULL; q := a[2]::integer;
                WHEN 5 THEN
                    EXIT WHEN de - q < 4; q := q + 4;
                ELSE
                    EXIT;
                END CASE;
            END LOOP;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Every field of a protobuf message, in order, until its end or its first malformed field: the field number,
-- the wire type, a varint or fixed value as int_value (fixed32 unsigned, fixed64 and varints as their 64 bits),
-- a length-delimited value as bytes_value. For reading fields the functions here do not name.
CREATE FUNCTION tracepost_pb_fields(message bytea)
RETURNS TABLE (field bigint, wire_type integer, int_value bigint, bytes_value bytea)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 1000 ROWS 20 AS $$
DECLARE
    buf bytea := message || '\x'::bytea;
    n integer := length(buf);
    q integer := 0;
    a bigint[];
BEGIN
    WHILE q < n LOOP
        a := tracepost_pb_varint(buf, q, n);
        EXIT WHEN a IS NULL;
        q := a[2]::integer;
        field := a[1] >> 3;
        wire_type := (a[1] & 7)::integer;
        int_value := NULL;
        bytes_value := NULL;
        CASE wire_type
        WHEN 0 THEN
            a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL;
            int_value := a[1]; q := a[2]::integer;
        WHEN 1 THEN
            EXIT WHEN n - q < 8;
            int_value := tracepost_pb_fixed64(buf, q); q := q + 8;
        WHEN 5 THEN
            EXIT WHEN n - q < 4;
            int_value := get_byte(buf, q)::bigint | (get_byte(buf, q + 1)::bigint << 8)
                | (get_byte(buf, q + 2)::bigint << 16) | (get_byte(buf, q + 3)::bigint << 24);
            q := q + 4;
        WHEN 2 THEN
            a := tracepost_pb_varint(buf, q, n);
            EXIT WHEN a IS NULL OR a[1] < 0 OR a[1] > n - a[2];
            bytes_value := substring(buf FROM a[2]::integer + 1 FOR a[1]::integer);
            q := (a[2] + a[1])::integer;
        ELSE
            EXIT;
        END CASE;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Unix nanoseconds as timestamptz (truncated to microseconds; whole seconds and microseconds apart, so no
-- float rounding).
CREATE FUNCTION tracepost_ns_timestamptz(ns bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_timestamp(ns / 1000000000) + (ns % 1000000000 / 1000) * interval '1 microsecond'
$$;

-- timestamptz as Unix nanoseconds, clamped to bigint (infinity included).
CREATE FUNCTION tracepost_timestamptz_ns(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN t = 'infinity'::timestamptz THEN 9223372036854775807
                WHEN t = '-infinity'::timestamptz THEN -9223372036854775808
                ELSE greatest(least(extract(epoch FROM t) * 1000000000, 9223372036854775807),
                              -9223372036854775808)::bigint
           END
$$;

-- A span's duration as the writer computes it: end - start as unsigned 64-bit numbers, 0 when the end is
-- before the start, at most 2^63 - 1.
CREATE FUNCTION tracepost_duration_ns(start_ns bigint, end_ns bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN (start_ns >= 0) = (end_ns >= 0) THEN greatest(end_ns - start_ns, 0)
                WHEN end_ns >= 0 THEN 0
                ELSE least(end_ns::numeric + 18446744073709551616 - start_ns, 9223372036854775807)::bigint
           END
$$;

-- The scalar fields of a SpanDetail (the last occurrence of a field wins), with defaults for absent ones
-- (original_name is NULL when absent; a string that is not valid UTF-8 is NULL). `scope` is the encoded
-- instrumentation scope (its attributes: tracepost_attributes(scope, 3)); `flags` the W3C trace flags.
CREATE FUNCTION tracepost_span_detail(detail bytea,
    OUT status_message text, OUT trace_state text, OUT flags bigint, OUT end_ns bigint,
    OUT original_name text, OUT scope_name text, OUT scope_version text, OUT scope bytea,
    OUT dropped_attributes_count bigint, OUT dropped_events_count bigint, OUT dropped_links_count bigint,
    OUT event_count integer, OUT link_count integer)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
DECLARE
    buf bytea := detail || '\x'::bytea;
    n integer := length(buf);
    q integer := 0;
    c integer;
    a bigint[];
    tag bigint;
    len bigint;
    wire_type integer;
    e integer;
BEGIN
    status_message := ''; trace_state := ''; flags := 0; end_ns := 0; scope_name := ''; scope_version := '';
    scope := '\x'; dropped_attributes_count := 0; dropped_events_count := 0; dropped_links_count := 0;
    event_count := 0; link_count := 0;
    FOR pass IN 1..2 LOOP
        -- pass 1: the SpanDetail; pass 2: its Scope
        IF pass = 2 THEN
            buf := scope;
            n := length(buf);
            q := 0;
        END IF;
        WHILE q < n LOOP
            c := get_byte(buf, q);
            IF c < 128 THEN tag := c; q := q + 1;
            ELSE a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; tag := a[1]; q := a[2]::integer;
            END IF;
            wire_type := tag & 7;
            tag := tag + pass * 1000;       -- the tags of both passes in one CASE
            CASE wire_type
            WHEN 2 THEN
                EXIT WHEN q >= n;
                c := get_byte(buf, q);
                IF c < 128 THEN len := c; q := q + 1;
                ELSE a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL; len := a[1]; q := a[2]::integer;
                END IF;
                EXIT WHEN len < 0 OR len > n - q;
                e := q + len::integer;
                CASE tag
                WHEN 1074 THEN status_message := tracepost_pb_text(substring(buf FROM q + 1 FOR e - q));
                WHEN 1058 THEN trace_state := tracepost_pb_text(substring(buf FROM q + 1 FOR e - q));
                WHEN 1090 THEN original_name := tracepost_pb_text(substring(buf FROM q + 1 FOR e - q));
                WHEN 1082 THEN scope := substring(buf FROM q + 1 FOR e - q);
                WHEN 1026 THEN event_count := event_count + 1;
                WHEN 1042 THEN link_count := link_count + 1;
                WHEN 2010 THEN scope_name := tracepost_pb_text(substring(buf FROM q + 1 FOR e - q));
                WHEN 2018 THEN scope_version := tracepost_pb_text(substring(buf FROM q + 1 FOR e - q));
                ELSE NULL;
                END CASE;
                q := e;
            WHEN 0 THEN
                a := tracepost_pb_varint(buf, q, n); EXIT WHEN a IS NULL;
                q := a[2]::integer;
                CASE tag
                WHEN 1016 THEN dropped_attributes_count := a[1] & 4294967295;
                WHEN 1032 THEN dropped_events_count := a[1] & 4294967295;
                WHEN 1048 THEN dropped_links_count := a[1] & 4294967295;
                ELSE NULL;
                END CASE;
            WHEN 1 THEN
                EXIT WHEN n - q < 8;
                IF tag = 1097 THEN end_ns := tracepost_pb_fixed64(buf, q); END IF;
                q := q + 8;
            WHEN 5 THEN
                EXIT WHEN n - q < 4;
                IF tag = 1069 THEN
                    flags := get_byte(buf, q)::bigint | (get_byte(buf, q + 1)::bigint << 8)
                        | (get_byte(buf, q + 2)::bigint << 16) | (get_byte(buf, q + 3)::bigint << 24);
                END IF;
                q := q + 4;
            ELSE
                EXIT;
            END CASE;
        END LOOP;
    END LOOP;
END
$$;

-- A SpanDetail's events, in order.
CREATE FUNCTION tracepost_events(detail bytea)
RETURNS TABLE (time_ns bigint, "time" timestamptz, name text, attributes jsonb, dropped_attributes_count bigint)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 2000 ROWS 2 AS $$
    SELECT x.time_ns, tracepost_ns_timestamptz(x.time_ns), x.name, tracepost_attributes_object(ev.bytes_value, 3),
           x.dropped_attributes_count
    FROM tracepost_pb_fields(detail) WITH ORDINALITY AS ev(field, wire_type, int_value, bytes_value, ord)
    CROSS JOIN LATERAL (
        SELECT coalesce((array_agg(f.int_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 1 AND f.wire_type = 1))[1], 0) AS time_ns,
               coalesce(tracepost_pb_text((array_agg(f.bytes_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 2 AND f.wire_type = 2))[1]), '') AS name,
               coalesce((array_agg(f.int_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 4 AND f.wire_type = 0))[1] & 4294967295, 0) AS dropped_attributes_count
        FROM tracepost_pb_fields(ev.bytes_value) WITH ORDINALITY AS f(field, wire_type, int_value, bytes_value, ord)
    ) AS x
    WHERE ev.field = 3 AND ev.wire_type = 2
    ORDER BY ev.ord
$$;

-- A SpanDetail's links, in order; IDs in lower-case hex.
CREATE FUNCTION tracepost_links(detail bytea)
RETURNS TABLE (trace_id text, span_id text, trace_state text, attributes jsonb, flags bigint,
               dropped_attributes_count bigint)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 2000 ROWS 2 AS $$
    SELECT encode(x.trace_id, 'hex'), encode(x.span_id, 'hex'), x.trace_state,
           tracepost_attributes_object(l.bytes_value, 4), x.flags, x.dropped_attributes_count
    FROM tracepost_pb_fields(detail) WITH ORDINALITY AS l(field, wire_type, int_value, bytes_value, ord)
    CROSS JOIN LATERAL (
        SELECT coalesce((array_agg(f.bytes_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 1 AND f.wire_type = 2))[1], '\x') AS trace_id,
               coalesce((array_agg(f.bytes_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 2 AND f.wire_type = 2))[1], '\x') AS span_id,
               coalesce(tracepost_pb_text((array_agg(f.bytes_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 3 AND f.wire_type = 2))[1]), '') AS trace_state,
               coalesce((array_agg(f.int_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 6 AND f.wire_type = 5))[1], 0) AS flags,
               coalesce((array_agg(f.int_value ORDER BY f.ord DESC) FILTER (WHERE f.field = 5 AND f.wire_type = 0))[1] & 4294967295, 0) AS dropped_attributes_count
        FROM tracepost_pb_fields(l.bytes_value) WITH ORDINALITY AS f(field, wire_type, int_value, bytes_value, ord)
    ) AS x
    WHERE l.field = 5 AND l.wire_type = 2
    ORDER BY l.ord
$$;

-- One row per stored span. Decoding is per block: filter on the block's columns (block_start_ns and
-- block_last_start_ns, its earliest and latest span start, block_start_ns being the partition key and a
-- block's spans all starting on its UTC day; block_max_duration_ns; service; cluster) to choose blocks before
-- they are decoded, or use tracepost_spans_between and tracepost_trace_spans, which do. Columns computed from
-- the detail or the resource (attributes, resource_attributes, status_message) are only decoded when the
-- query uses them.
CREATE VIEW tracepost_spans AS
SELECT encode(s.trace_id, 'hex') AS trace_id,
       encode(s.span_id, 'hex') AS span_id,
       encode(s.parent_span_id, 'hex') AS parent_span_id,
       b.service,
       b.cluster,
       s.name,
       CASE s.kind WHEN 0 THEN 'unspecified' WHEN 1 THEN 'internal' WHEN 2 THEN 'server' WHEN 3 THEN 'client'
                   WHEN 4 THEN 'producer' WHEN 5 THEN 'consumer' ELSE s.kind::text END AS kind,
       CASE s.status_code WHEN 0 THEN 'unset' WHEN 1 THEN 'ok' WHEN 2 THEN 'error'
                          ELSE s.status_code::text END AS status_code,
       tracepost_ns_timestamptz(s.start_ns) AS start_time,
       s.start_ns,
       s.end_ns,
       tracepost_duration_ns(s.start_ns, s.end_ns) AS duration_ns,
       tracepost_attributes_object(s.detail) AS attributes,
       (SELECT tracepost_attributes_object(r.body) FROM resources r
        WHERE r.resource_id = s.resource_id ORDER BY r.day DESC LIMIT 1) AS resource_attributes,
       (tracepost_span_detail(s.detail)).status_message AS status_message,
       s.resource_id,
       s.detail,
       b.block_id,
       b.start_ns AS block_start_ns,
       b.last_start_ns AS block_last_start_ns,
       b.max_duration_ns AS block_max_duration_ns
FROM span_blocks b
CROSS JOIN LATERAL tracepost_block_spans(b.spans) AS s;

-- The start of the UTC day of Unix nanoseconds `ns` (the partition a block starting then is in).
CREATE FUNCTION tracepost_day_start_ns(ns bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN ns < -9223286400000000000 THEN -9223372036854775808
                ELSE ns - mod(mod(ns, 86400000000000) + 86400000000000, 86400000000000) END
$$;

-- The spans that start in [from_time, to_time). Only the blocks, and daily partitions, that can hold them are
-- decoded: a block's spans all start on the UTC day of its first one (block_start_ns, the partition key).
CREATE FUNCTION tracepost_spans_between(from_time timestamptz, to_time timestamptz) RETURNS SETOF tracepost_spans
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM tracepost_spans v
    WHERE v.block_start_ns < tracepost_timestamptz_ns(to_time)
      AND v.block_start_ns >= tracepost_day_start_ns(tracepost_timestamptz_ns(from_time))
      AND v.block_last_start_ns >= tracepost_timestamptz_ns(from_time)
      AND v.start_ns >= tracepost_timestamptz_ns(from_time)
      AND v.start_ns < tracepost_timestamptz_ns(to_time)
$$;

-- The spans of one trace: `trace_index` names its blocks (and their days); only those are decoded.
CREATE FUNCTION tracepost_trace_spans(trace uuid) RETURNS SETOF tracepost_spans
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM trace_index t
    JOIN tracepost_spans v
      ON v.block_id = t.block_id
     AND v.block_start_ns <= t.start_ns
     AND v.block_start_ns >= tracepost_day_start_ns(t.start_ns)
    WHERE t.trace_id = trace
      AND v.trace_id = replace(trace::text, '-', '')
$$;
