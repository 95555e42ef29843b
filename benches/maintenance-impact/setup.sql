-- audit_log of :rows rows in created_at order (ids grow with time, as in an
-- append-only log): the first :old rows spread over 730 to 366 days ago, the
-- rest over 364 days to 1 hour ago. One day of margin on each side of the
-- 365-day cutoff, so the rows to delete do not depend on when a phase runs.
-- Durations in seconds: days of 86400 s, whatever the time zone.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    actor int,
    payload text
);
SET maintenance_work_mem = '256MB';
INSERT INTO audit_log (created_at, actor, payload)
SELECT CASE WHEN i <= :old
            THEN now() - make_interval(secs => 730 * 86400.0 - (i - 1) * (364 * 86400.0 / :old))
            ELSE now() - make_interval(secs => 364 * 86400.0 - (i - :old - 1) * ((364 * 86400.0 - 3600) / (:rows - :old)))
       END,
       i % 1000,
       '{"action":"update","object":' || i || ',"hash":"' || md5(i::text) || '"}'
FROM generate_series(1, :rows) AS i;
CREATE INDEX audit_log_created_at ON audit_log (created_at);
VACUUM ANALYZE;
