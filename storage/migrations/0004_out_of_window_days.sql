-- Days of spans that sit in a default partition because their timestamps lie beyond every daily partition
-- (a client clock years ahead, a bad timestamp), with when partition maintenance first saw them. Retention
-- counts from that moment for such rows, since their own timestamps would keep them forever.
CREATE TABLE out_of_window_days (
    table_name text NOT NULL,
    day integer NOT NULL,
    first_seen_ns bigint NOT NULL,
    PRIMARY KEY (table_name, day)
);
