//! The embedded run ledger: SQLite in one file, in WAL mode so `aplab status` can read
//! while a runner writes, with a busy timeout so two runners on one ledger wait for each
//! other instead of failing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::*;

const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    status      TEXT NOT NULL,
    request     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cases (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    case_id     TEXT NOT NULL,
    scenario    TEXT NOT NULL,
    matrix      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    next_phase  INTEGER NOT NULL,
    class       TEXT,
    message     TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, case_id)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id     TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    phase      TEXT NOT NULL,
    step       TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    class      TEXT,
    code       TEXT,
    message    TEXT,
    started_at INTEGER NOT NULL,
    elapsed_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_by_case ON steps(run_id, case_id);
CREATE TABLE IF NOT EXISTS leases (
    device_id   TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_log (
    device_id   TEXT NOT NULL,
    owner       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lease_log_by_run ON lease_log(run_id);
CREATE TABLE IF NOT EXISTS parked (
    run_id     TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    next_phase INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER,
    PRIMARY KEY (run_id, case_id)
);
CREATE TABLE IF NOT EXISTS lifecycle (
    device_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    at        INTEGER NOT NULL,
    run_id    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lifecycle_by_device ON lifecycle(device_id, kind, at);
CREATE TABLE IF NOT EXISTS health (
    device_id  TEXT PRIMARY KEY,
    health     TEXT NOT NULL,
    checked_at INTEGER NOT NULL,
    run_id     TEXT NOT NULL,
    reason     TEXT NOT NULL
);
";

/// The run ledger in one SQLite file.
pub struct SqliteLedger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path`. Runners started at the same moment
    /// open it together: while one switches a new file to WAL or writes the schema, the
    /// other can be told "database is locked" at once (SQLite does not wait for those);
    /// it tries again for up to [`OPEN_PATIENCE`] before giving up.
    pub fn open(path: &Path) -> LedgerResult<SqliteLedger> {
        let deadline = std::time::Instant::now() + OPEN_PATIENCE;
        loop {
            match Self::open_once(path) {
                Err(LedgerError::Sqlite { source, .. })
                    if is_busy(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> LedgerResult<SqliteLedger> {
        let err = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory would surface as an opaque "unable to open" error.
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Schema and version in one write transaction, taken before anything is read, so
        // a second runner waits for the first instead of failing half-way.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let version: i32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(err(rusqlite::Error::InvalidParameterName(format!(
                "schema version {version} is newer than this aplab understands ({SCHEMA_VERSION}); upgrade aplab"
            ))));
        }
        tx.execute_batch(SCHEMA).map_err(err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(SqliteLedger {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> LedgerResult<T> {
        // A panic while holding the lock cannot leave a half-written transaction behind
        // (SQLite rolls it back), so a poisoned lock is safe to reuse.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// How long opening the ledger keeps trying while another runner holds it.
const OPEN_PATIENCE: Duration = Duration::from_secs(60);

/// "database is locked" or "busy": another connection has the file right now.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        started_at: r.get(1)?,
        finished_at: r.get(2)?,
        status: RunStatus::parse(&r.get::<_, String>(3)?),
        request: r.get(4)?,
    })
}

fn case_from_row(r: &rusqlite::Row) -> rusqlite::Result<CaseRecord> {
    Ok(CaseRecord {
        run_id: r.get(0)?,
        case_id: r.get(1)?,
        scenario: r.get(2)?,
        matrix: r.get(3)?,
        device_id: r.get(4)?,
        status: CaseStatus::parse(&r.get::<_, String>(5)?),
        next_phase: r.get(6)?,
        class: r.get(7)?,
        message: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

fn lease_from_row(r: &rusqlite::Row) -> rusqlite::Result<Lease> {
    Ok(Lease {
        device_id: r.get(0)?,
        owner: r.get(1)?,
        run_id: r.get(2)?,
        case_id: r.get(3)?,
        acquired_at: r.get(4)?,
        expires_at: r.get(5)?,
    })
}

fn lifecycle_from_row(r: &rusqlite::Row) -> rusqlite::Result<LifecycleEvent> {
    Ok(LifecycleEvent {
        device_id: r.get(0)?,
        kind: r.get(1)?,
        at: r.get(2)?,
        run_id: r.get(3)?,
        detail: r.get(4)?,
    })
}

const CASE_COLUMNS: &str = "run_id, case_id, scenario, matrix, device_id, status, next_phase, class, message, started_at, finished_at";

fn update_case_row(c: &Connection, k: &CaseRecord) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE cases SET status = ?3, next_phase = ?4, class = ?5, message = ?6, started_at = ?7,
         finished_at = ?8, device_id = ?9 WHERE run_id = ?1 AND case_id = ?2",
        params![
            k.run_id,
            k.case_id,
            k.status.as_str(),
            k.next_phase,
            k.class,
            k.message,
            k.started_at,
            k.finished_at,
            k.device_id
        ],
    )
}

fn insert_parked(c: &Connection, w: &ParkedWait) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO parked (run_id, case_id, device_id, next_phase, not_before, not_after)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![w.run_id, w.case_id, w.device_id, w.next_phase, w.not_before, w.not_after],
    )
    .map(|_| ())
}

impl Ledger for SqliteLedger {
    fn create_run(&self, id: &str, request: &str, at: Millis) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, started_at, status, request) VALUES (?1, ?2, 'running', ?3)",
                params![id, at, request],
            )
            .map(|_| ())
        })
    }

    fn run(&self, id: &str) -> LedgerResult<RunRecord> {
        self.with(|c| {
            c.query_row(
                "SELECT id, started_at, finished_at, status, request FROM runs WHERE id = ?1",
                [id],
                run_from_row,
            )
            .optional()
        })?
        .ok_or_else(|| LedgerError::UnknownRun(id.to_string()))
    }

    fn recent_runs(&self, limit: usize) -> LedgerResult<Vec<RunRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, started_at, finished_at, status, request FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1",
            )?;
            stmt.query_map([limit as i64], run_from_row)?.collect()
        })
    }

    fn finish_run(&self, id: &str, status: RunStatus, at: Millis) -> LedgerResult<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), at],
            )
        })?;
        if n == 0 {
            return Err(LedgerError::UnknownRun(id.to_string()));
        }
        Ok(())
    }

    fn add_cases(&self, cases: &[CaseRecord]) -> LedgerResult<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare(&format!(
                    "INSERT OR IGNORE INTO cases ({CASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))?;
                for k in cases {
                    stmt.execute(params![
                        k.run_id,
                        k.case_id,
                        k.scenario,
                        k.matrix,
                        k.device_id,
                        k.status.as_str(),
                        k.next_phase,
                        k.class,
                        k.message,
                        k.started_at,
                        k.finished_at
                    ])?;
                }
            }
            tx.commit()
        })
    }

    fn cases(&self, run_id: &str) -> LedgerResult<Vec<CaseRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CASE_COLUMNS} FROM cases WHERE run_id = ?1 ORDER BY rowid"
            ))?;
            stmt.query_map([run_id], case_from_row)?.collect()
        })
    }

    fn update_case(&self, k: &CaseRecord) -> LedgerResult<()> {
        let n = self.with(|c| update_case_row(c, k))?;
        if n == 0 {
            return Err(LedgerError::UnknownCase(k.case_id.clone()));
        }
        Ok(())
    }

    fn advance_case(&self, k: &CaseRecord, park: Option<&ParkedWait>) -> LedgerResult<()> {
        let n = self.with(|c| {
            let tx = c.transaction()?;
            let n = update_case_row(&tx, k)?;
            tx.execute(
                "DELETE FROM parked WHERE run_id = ?1 AND case_id = ?2",
                params![k.run_id, k.case_id],
            )?;
            if let Some(w) = park {
                insert_parked(&tx, w)?;
            }
            if n == 1 {
                tx.commit()?;
            }
            Ok(n)
        })?;
        if n == 0 {
            return Err(LedgerError::UnknownCase(k.case_id.clone()));
        }
        Ok(())
    }

    fn record_step(&self, s: &StepRecord) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO steps (run_id, case_id, phase, step, attempt, status, class, code, message, started_at, elapsed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    s.run_id,
                    s.case_id,
                    s.phase,
                    s.step,
                    s.attempt,
                    s.status,
                    s.class,
                    s.code,
                    s.message,
                    s.started_at,
                    s.elapsed_ms
                ],
            )
            .map(|_| ())
        })
    }

    fn steps(&self, run_id: &str, case_id: &str) -> LedgerResult<Vec<StepRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, case_id, phase, step, attempt, status, class, code, message, started_at, elapsed_ms
                 FROM steps WHERE run_id = ?1 AND case_id = ?2 ORDER BY rowid",
            )?;
            stmt.query_map([run_id, case_id], |r| {
                Ok(StepRecord {
                    run_id: r.get(0)?,
                    case_id: r.get(1)?,
                    phase: r.get(2)?,
                    step: r.get(3)?,
                    attempt: r.get(4)?,
                    status: r.get(5)?,
                    class: r.get(6)?,
                    code: r.get(7)?,
                    message: r.get(8)?,
                    started_at: r.get(9)?,
                    elapsed_ms: r.get(10)?,
                })
            })?
            .collect()
        })
    }

    fn try_lease(&self, lease: &Lease, now: Millis) -> LedgerResult<bool> {
        self.with(|c| {
            // IMMEDIATE takes the write lock before reading, so the check and the write
            // are one step for every process sharing the file.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let holder: Option<(String, Millis)> = tx
                .query_row("SELECT owner, expires_at FROM leases WHERE device_id = ?1", [&lease.device_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let free = match holder {
                None => true,
                Some((_, expires_at)) => expires_at <= now,
            };
            if !free {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO leases (device_id, owner, run_id, case_id, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![lease.device_id, lease.owner, lease.run_id, lease.case_id, lease.acquired_at, lease.expires_at],
            )?;
            tx.execute(
                "INSERT INTO lease_log (device_id, owner, run_id, case_id, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![lease.device_id, lease.owner, lease.run_id, lease.case_id, lease.acquired_at, lease.expires_at],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn heartbeat(&self, owner: &str, expires_at: Millis) -> LedgerResult<usize> {
        self.with(|c| {
            c.execute(
                "UPDATE leases SET expires_at = ?2 WHERE owner = ?1",
                params![owner, expires_at],
            )
        })
    }

    fn release(&self, device_id: &str, owner: &str) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM leases WHERE device_id = ?1 AND owner = ?2",
                params![device_id, owner],
            )
            .map(|_| ())
        })
    }

    fn leases(&self, now: Millis) -> LedgerResult<Vec<Lease>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT device_id, owner, run_id, case_id, acquired_at, expires_at FROM leases
                 WHERE expires_at > ?1 ORDER BY device_id",
            )?;
            stmt.query_map([now], lease_from_row)?.collect()
        })
    }

    fn lease_history(&self, run_id: &str) -> LedgerResult<Vec<Lease>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT device_id, owner, run_id, case_id, acquired_at, expires_at FROM lease_log
                 WHERE run_id = ?1 ORDER BY rowid",
            )?;
            stmt.query_map([run_id], lease_from_row)?.collect()
        })
    }

    fn park(&self, w: &ParkedWait) -> LedgerResult<()> {
        self.with(|c| insert_parked(c, w))
    }

    fn unpark(&self, run_id: &str, case_id: &str) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM parked WHERE run_id = ?1 AND case_id = ?2",
                params![run_id, case_id],
            )
            .map(|_| ())
        })
    }

    fn parked(&self, run_id: &str) -> LedgerResult<Vec<ParkedWait>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, case_id, device_id, next_phase, not_before, not_after FROM parked
                 WHERE run_id = ?1 ORDER BY not_before",
            )?;
            stmt.query_map([run_id], |r| {
                Ok(ParkedWait {
                    run_id: r.get(0)?,
                    case_id: r.get(1)?,
                    device_id: r.get(2)?,
                    next_phase: r.get(3)?,
                    not_before: r.get(4)?,
                    not_after: r.get(5)?,
                })
            })?
            .collect()
        })
    }

    fn record_lifecycle(&self, e: &LifecycleEvent) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO lifecycle (device_id, kind, at, run_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.device_id, e.kind, e.at, e.run_id, e.detail],
            )
            .map(|_| ())
        })
    }

    fn last_lifecycle(&self, device_id: &str, kind: &str) -> LedgerResult<Option<LifecycleEvent>> {
        self.with(|c| {
            c.query_row(
                "SELECT device_id, kind, at, run_id, detail FROM lifecycle
                 WHERE device_id = ?1 AND kind = ?2 ORDER BY at DESC, rowid DESC LIMIT 1",
                [device_id, kind],
                lifecycle_from_row,
            )
            .optional()
        })
    }

    fn set_health(&self, h: &DeviceHealth) -> LedgerResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO health (device_id, health, checked_at, run_id, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![h.device_id, h.health.as_str(), h.checked_at, h.run_id, h.reason],
            )
            .map(|_| ())
        })
    }

    fn health(&self, device_id: &str) -> LedgerResult<Option<DeviceHealth>> {
        self.with(|c| {
            c.query_row(
                "SELECT device_id, health, checked_at, run_id, reason FROM health WHERE device_id = ?1",
                [device_id],
                |r| {
                    Ok(DeviceHealth {
                        device_id: r.get(0)?,
                        health: Health::parse(&r.get::<_, String>(1)?),
                        checked_at: r.get(2)?,
                        run_id: r.get(3)?,
                        reason: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }
}
