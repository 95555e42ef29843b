-- The application's audit traffic: one audit row written, the latest ones
-- read back (what an activity feed does). Run beside pgbench's tpcb-like.
\set actor random(1, 1000)
INSERT INTO audit_log (created_at, actor, payload)
    VALUES (now(), :actor, '{"action":"update","client":' || :client_id || '}');
SELECT id, created_at, actor, payload
    FROM audit_log
    WHERE created_at > now() - interval '1 minute'
    ORDER BY created_at DESC
    LIMIT 10;
