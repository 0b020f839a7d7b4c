//! The audit log: who changed the catalog or its access rules, and who failed to log in.
//!
//! One JSON line per event in `<data dir>/audit.log`, appended and flushed to the file before
//! the statement's result goes back to the client. `quiver.audit_log` reads it: superusers see
//! every event, a project's data owners those of their project.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use datafusion::sql::sqlparser::ast;
use serde::{Deserialize, Serialize};

use crate::error::{SqlError, SqlResult};
use crate::parser::{ClusterChange, Statement, object_name_to_string};

/// One audited event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub time: DateTime<Utc>,
    pub user: String,
    /// The session's project, or the project a login asked for.
    pub project: String,
    /// What was done: `CREATE FEATURE GROUP`, `GRANT`, `LOGIN`, ...
    pub kind: String,
    /// What it was done to: a feature group, a user, a project, ...
    pub object: String,
    pub success: bool,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// The append-only file of audit events.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> SqlResult<AuditLog> {
        let path = data_dir.join("audit.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| SqlError::Internal(format!("cannot open {}: {e}", path.display())))?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends an event. An event that cannot be written is reported in the server log: the
    /// statement it describes has already happened and must not be reported as failed.
    pub fn record(&self, event: &AuditEvent) {
        let written = serde_json::to_string(event)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push('\n');
                let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
                file.write_all(line.as_bytes())?;
                file.sync_data()
            });
        if let Err(error) = written {
            tracing::error!(path = %self.path.display(), %error, ?event, "cannot write the audit log");
        }
    }

    /// Every event when `every_project` (what a superuser reads), else those of `project`.
    pub fn events(&self, every_project: bool, project: &str) -> SqlResult<Vec<AuditEvent>> {
        let file = File::open(&self.path)
            .map_err(|e| SqlError::Internal(format!("cannot read {}: {e}", self.path.display())))?;
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| {
                SqlError::Internal(format!("cannot read {}: {e}", self.path.display()))
            })?;
            // A line torn by a crash is skipped; every other line was written whole.
            let Ok(event) = serde_json::from_str::<AuditEvent>(&line) else {
                continue;
            };
            if every_project || event.project == project {
                events.push(event);
            }
        }
        Ok(events)
    }
}

/// The kind and object of a statement the audit log records (DDL, users, grants and shares), or
/// `None` for one it does not.
pub(crate) fn subject(statement: &Statement) -> Option<(String, String)> {
    let named = |kind: &str, name: &str| Some((kind.to_string(), name.to_string()));
    match statement {
        Statement::CreateFeatureGroup(create) => named("CREATE FEATURE GROUP", &create.name),
        Statement::AlterFeatureGroup { name, .. } => named("ALTER FEATURE GROUP", name),
        Statement::DropFeatureGroup { name, .. } => named("DROP FEATURE GROUP", name),
        Statement::CreateProject { name, .. } => named("CREATE PROJECT", name),
        Statement::DropProject { name, .. } => named("DROP PROJECT", name),
        Statement::CreateFeatureView(create) => named("CREATE FEATURE VIEW", &create.name),
        Statement::DropFeatureView { name, .. } => named("DROP FEATURE VIEW", name),
        Statement::CreateTrainingDataset(create) => named("CREATE TRAINING DATASET", &create.name),
        Statement::RecreateTrainingDataset { name, .. } => named("RECREATE TRAINING DATASET", name),
        Statement::DropTrainingDataset { name, .. } => named("DROP TRAINING DATASET", name),
        Statement::DropModel { name, .. } => named("DROP MODEL", name),
        Statement::CreateUser(create) => named(
            "CREATE USER",
            &create
                .names
                .iter()
                .map(object_name_to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Statement::AlterUser { name, .. } => named("ALTER USER", name),
        Statement::DropUser { names, .. } => named("DROP USER", &names.join(", ")),
        Statement::Grant {
            role,
            project,
            users,
        } => named(
            &format!("GRANT {}", role.sql_name()),
            &format!("project {project} to {}", users.join(", ")),
        ),
        Statement::Revoke {
            role,
            project,
            users,
        } => named(
            &match role {
                Some(role) => format!("REVOKE {}", role.sql_name()),
                None => "REVOKE".to_string(),
            },
            &format!("project {project} from {}", users.join(", ")),
        ),
        Statement::ShareFeatureGroup { name, with } => {
            named("SHARE FEATURE GROUP", &format!("{name} with {with}"))
        }
        Statement::UnshareFeatureGroup { name, with } => {
            named("UNSHARE FEATURE GROUP", &format!("{name} from {with}"))
        }
        Statement::AlterCluster(ClusterChange::AddNode { node_id, raft_addr }) => named(
            "ALTER CLUSTER ADD NODE",
            &format!("{node_id} at {raft_addr}"),
        ),
        Statement::AlterCluster(ClusterChange::RemoveNode { node_id }) => {
            named("ALTER CLUSTER REMOVE NODE", &node_id.to_string())
        }
        Statement::Sql(sql) => match sql.as_ref() {
            ast::Statement::CreateTable(create) => {
                named("CREATE TABLE", &object_name_to_string(&create.name))
            }
            ast::Statement::Drop {
                object_type, names, ..
            } => named(
                &format!("DROP {object_type}"),
                &names
                    .iter()
                    .map(object_name_to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ast::Statement::AlterTable(alter) => {
                named("ALTER TABLE", &object_name_to_string(&alter.name))
            }
            ast::Statement::Truncate(truncate) => named(
                "TRUNCATE",
                &truncate
                    .table_names
                    .iter()
                    .map(|t| object_name_to_string(&t.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            _ => None,
        },
        Statement::ShowFeatureGroups
        | Statement::DescribeFeatureGroup { .. }
        | Statement::ShowProjects
        | Statement::ShowFeatureViews
        | Statement::DescribeFeatureView { .. }
        | Statement::ShowTrainingDatasets
        | Statement::DescribeTrainingDataset { .. } => None,
    }
}
