-- A results store of schema 1 (coordlab before issue #9 item 5), dumped with sqlite3's iterdump after
-- writing it through that release's runners/store.py: three episodes of one run with their trace events.
-- Seed 0 repeated an email that the old counter called "caught"; seed 2 has 3 per-request handoff failures.
BEGIN TRANSACTION;
CREATE TABLE episodes (
    episode_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    task TEXT NOT NULL,              -- name@version[params]
    framework TEXT NOT NULL,
    framework_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    profile TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,            -- success | failed_check | error | timeout | infra_error
    harmful INTEGER NOT NULL,
    termination TEXT NOT NULL,
    verdict_json TEXT NOT NULL,
    model_calls INTEGER NOT NULL, tool_calls INTEGER NOT NULL, tool_errors INTEGER NOT NULL, handoffs INTEGER NOT NULL, handoff_failures INTEGER NOT NULL, framework_retries INTEGER NOT NULL, transport_retries INTEGER NOT NULL, gate_rejections INTEGER NOT NULL, faults_injected INTEGER NOT NULL, faults_caught INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    wall_ms REAL NOT NULL,
    construction_ms REAL NOT NULL,
    execution_ms REAL NOT NULL,
    simulator_ms REAL NOT NULL,      -- time the simulator spent answering (server side)
    knobs_json TEXT NOT NULL,
    notes_json TEXT NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL,
    UNIQUE (run_id, task, framework, framework_version, variant, profile, seed)
);
INSERT INTO "episodes" VALUES(1,'run-v1','appointment_rebooking@1+f251c446c5f9','plain','0.1.0','linear','semantic_10pct',0,'failed_check',1,'completed','{"success": false, "harmful": true}',8,4,0,3,0,0,0,0,1,1,4546,184,120.0,20.0,100.0,5.0,'{}','[]',NULL,1790000000.0);
INSERT INTO "episodes" VALUES(2,'run-v1','appointment_rebooking@1+f251c446c5f9','plain','0.1.0','linear','semantic_10pct',1,'success',0,'completed','{"success": true, "harmful": false}',8,4,0,3,0,0,0,0,0,0,4546,184,120.0,20.0,100.0,5.0,'{}','[]',NULL,1790000001.0);
INSERT INTO "episodes" VALUES(3,'run-v1','appointment_rebooking@1+f251c446c5f9','plain','0.1.0','linear','semantic_10pct',2,'failed_check',1,'completed','{"success": false, "harmful": true}',8,4,0,3,3,0,0,0,1,0,4546,184,120.0,20.0,100.0,5.0,'{}','[]',NULL,1790000002.0);
CREATE TABLE events (
    episode_id INTEGER NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at_ms REAL NOT NULL,             -- since the episode started (stores before 0.1.1: its first event)
    role TEXT,
    step TEXT,
    detail_json TEXT NOT NULL,
    PRIMARY KEY (episode_id, seq)
);
INSERT INTO "events" VALUES(1,0,'model_call',1.0,'coordinator','send','{"attempt": 0, "kind": "tool_call"}');
INSERT INTO "events" VALUES(1,1,'fault',1.0,'coordinator','send','{"fault": "repeated_side_effect", "attempt": 0, "caught": true}');
INSERT INTO "events" VALUES(1,2,'side_effect',2.0,NULL,NULL,'{"tool": "send_email", "arguments": {}}');
INSERT INTO "events" VALUES(2,0,'model_call',1.0,'scheduler','find_slot','{"attempt": 0, "kind": "final"}');
INSERT INTO "events" VALUES(3,0,'fault',1.0,'writer','draft','{"fault": "wrong_value", "attempt": 0, "caught": false}');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema_version','1');
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,            -- running | interrupted | finished
    spec_json TEXT NOT NULL,         -- the sweep: what was asked for
    metadata_json TEXT NOT NULL      -- versions, knobs, machine, git commit
);
INSERT INTO "runs" VALUES('run-v1','identity-v1',1.7953064182961761951e+09,'finished','{"tasks": ["appointment_rebooking@1"], "frameworks": ["plain"], "variants": ["linear"], "profiles": ["semantic_10pct"], "seeds": [0, 1, 2]}','{"git_commit": "f8690fa"}');
CREATE INDEX runs_by_identity ON runs (identity, created_at);
COMMIT;
