-- Puts the old half back when a rollback could not (new ids, same times as
-- setup.sql).
DELETE FROM audit_log WHERE created_at < now() - make_interval(secs => 365 * 86400.0);
INSERT INTO audit_log (created_at, actor, payload)
SELECT now() - make_interval(secs => 730 * 86400.0 - (i - 1) * (364 * 86400.0 / :old)),
       i % 1000,
       '{"action":"update","object":' || i || ',"hash":"' || md5(i::text) || '"}'
FROM generate_series(1, :old) AS i;
