//! Access control: which statements a user may run in a project, and the statements that manage
//! users, project members and shares.
//!
//! Every statement is checked when it executes (simple or extended protocol, cursors and COPY
//! included), against the catalog as it is then: a REVOKE takes effect at the member's next
//! statement. Superusers may do everything; a project member what their role allows
//! ([`ProjectRole::allows`]); anyone else nothing in the project.

use datafusion::sql::sqlparser::ast;
use quiver_catalog::{
    CatalogCommand, CatalogState, Privilege, ProjectRole, ScramVerifier, UserChange,
};

use crate::error::{SqlError, SqlResult};
use crate::parser::{Statement, object_name_to_string};
use crate::serving;
use crate::session::{CommandTag, Session};

/// What a statement needs from its user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// Nothing beyond being connected: settings, transaction control, CREATE PROJECT, ALTER
    /// USER (which checks who changes what itself).
    Connected,
    /// A privilege in the session's project.
    InProject(Privilege),
    /// A privilege in a project the statement names (GRANT, REVOKE, DROP PROJECT).
    InNamedProject(String, Privilege),
    /// A superuser, for what reaches beyond projects; the text says what.
    Superuser(&'static str),
}

/// Refuses the statement with 42501 unless `user` may run it in `project`.
pub(crate) fn authorize(
    catalog: &CatalogState,
    project: &str,
    user: &str,
    statement: &Statement,
) -> SqlResult<()> {
    let superuser = catalog.user(user).is_some_and(|u| u.superuser);
    if superuser {
        return Ok(());
    }
    if let Statement::CreateTrainingDataset(create) = statement
        && create.location.is_some()
    {
        return Err(SqlError::InsufficientPrivilege(
            "only superusers may write a training dataset to an explicit LOCATION (it names \
             server-side files); omit LOCATION to write under the data directory"
                .into(),
        ));
    }
    match requirement(statement) {
        Requirement::Connected => Ok(()),
        Requirement::InProject(privilege) => check_role(catalog, project, user, privilege),
        // A project that does not exist is the statement's own error to report (3D000).
        Requirement::InNamedProject(named, privilege) => match catalog.project(&named) {
            Some(_) => check_role(catalog, &named, user, privilege),
            None => Ok(()),
        },
        Requirement::Superuser(what) => Err(SqlError::InsufficientPrivilege(format!(
            "only superusers may {what}"
        ))),
    }
}

/// Refuses a session in a project its user is not a member of.
pub(crate) fn check_membership(catalog: &CatalogState, project: &str, user: &str) -> SqlResult<()> {
    match catalog.role_in(project, user) {
        Some(_) => Ok(()),
        None => Err(not_a_member(project, user)),
    }
}

fn check_role(
    catalog: &CatalogState,
    project: &str,
    user: &str,
    privilege: Privilege,
) -> SqlResult<()> {
    let role = catalog
        .role_in(project, user)
        .ok_or_else(|| not_a_member(project, user))?;
    if role.allows(privilege) {
        return Ok(());
    }
    Err(SqlError::InsufficientPrivilege(format!(
        "user \"{user}\" is {} of project \"{project}\" and may not {privilege} it (that takes {})",
        with_article(role),
        with_article(ProjectRole::least_allowing(privilege)),
    )))
}

/// A write to a feature group another project shares with the session's project.
pub(crate) fn shared_read_only(owner: &str, name: &str) -> SqlError {
    SqlError::InsufficientPrivilege(format!(
        "feature group \"{owner}.{name}\" is shared with this project to read; only project \"{owner}\" writes it"
    ))
}

fn not_a_member(project: &str, user: &str) -> SqlError {
    SqlError::InsufficientPrivilege(format!(
        "user \"{user}\" is not a member of project \"{project}\""
    ))
}

fn with_article(role: ProjectRole) -> String {
    match role {
        ProjectRole::Observer => "an observer".into(),
        ProjectRole::DataScientist => "a data scientist".into(),
        ProjectRole::DataOwner => "a data owner".into(),
    }
}

fn requirement(statement: &Statement) -> Requirement {
    use Requirement::*;
    match statement {
        Statement::Sql(sql) => sql_requirement(sql),
        Statement::CreateFeatureGroup(_)
        | Statement::AlterFeatureGroup { .. }
        | Statement::DropFeatureGroup { .. } => InProject(Privilege::WriteData),
        Statement::ShowFeatureGroups
        | Statement::DescribeFeatureGroup { .. }
        | Statement::ShowFeatureViews
        | Statement::DescribeFeatureView { .. }
        | Statement::ShowTrainingDatasets
        | Statement::DescribeTrainingDataset { .. } => InProject(Privilege::Read),
        // Lists only the projects the user may see.
        Statement::ShowProjects | Statement::CreateProject { .. } => Connected,
        Statement::DropProject { name, .. } => {
            InNamedProject(name.clone(), Privilege::ManageMembers)
        }
        Statement::CreateFeatureView(_)
        | Statement::DropFeatureView { .. }
        | Statement::CreateTrainingDataset(_)
        | Statement::RecreateTrainingDataset { .. }
        | Statement::DropTrainingDataset { .. }
        | Statement::DropModel { .. } => InProject(Privilege::CreateArtifacts),
        Statement::CreateUser(_) => Superuser("create users"),
        Statement::DropUser { .. } => Superuser("drop users"),
        Statement::AlterUser { .. } => Connected,
        Statement::Grant { project, .. } | Statement::Revoke { project, .. } => {
            InNamedProject(project.clone(), Privilege::ManageMembers)
        }
        Statement::ShareFeatureGroup { .. } | Statement::UnshareFeatureGroup { .. } => {
            InProject(Privilege::ManageMembers)
        }
        Statement::AlterCluster(_) => Superuser("change the cluster's membership"),
    }
}

fn sql_requirement(statement: &ast::Statement) -> Requirement {
    use Requirement::*;
    use ast::Statement as S;
    match statement {
        S::Query(_) if serving::calls_table_function(statement, &["train_model", "tune_model"]) => {
            InProject(Privilege::CreateArtifacts)
        }
        S::Query(_) | S::Declare { .. } | S::Copy { to: true, .. } => InProject(Privilege::Read),
        S::Explain { statement, .. } => sql_requirement(statement),
        S::Insert(_)
        | S::Update { .. }
        | S::Delete(_)
        | S::Truncate { .. }
        | S::Copy { to: false, .. }
        | S::CreateTable(_)
        | S::CreateIndex(_)
        | S::AlterTable { .. }
        | S::Drop { .. } => InProject(Privilege::WriteData),
        // Settings, transaction control, FETCH and CLOSE of cursors declared under a check,
        // DEALLOCATE, and what is refused as unsupported anyway.
        _ => Connected,
    }
}

/// Executes a user, membership or sharing statement.
pub(crate) async fn execute(session: &Session, statement: &Statement) -> SqlResult<CommandTag> {
    let engine = session.engine();
    match statement {
        Statement::CreateUser(create) => {
            let command = create_user_command(create)?;
            for name in &create.names {
                let name = object_name_to_string(name);
                let exists = engine.catalog.snapshot().user(&name).is_some();
                if exists && create.if_not_exists {
                    session.notice(format!("NOTICE: role \"{name}\" already exists, skipping"));
                    continue;
                }
                let mut command = command.clone();
                if let CatalogCommand::CreateUser { name: named, .. } = &mut command {
                    *named = name;
                }
                engine.change_catalog(command).await?;
            }
            Ok(CommandTag::new("CREATE ROLE"))
        }
        Statement::AlterUser { name, operation } => {
            let change = user_change(session, name, operation)?;
            engine
                .change_catalog(CatalogCommand::AlterUser {
                    name: name.clone(),
                    change,
                })
                .await?;
            Ok(CommandTag::new("ALTER ROLE"))
        }
        Statement::DropUser { names, if_exists } => {
            for name in names {
                let catalog = engine.catalog.snapshot();
                if catalog.user(name).is_none() && *if_exists {
                    session.notice(format!("NOTICE: role \"{name}\" does not exist, skipping"));
                    continue;
                }
                if name == quiver_catalog::BOOTSTRAP_NAME {
                    return Err(SqlError::DependentObjects(format!(
                        "cannot drop role \"{name}\": it is the bootstrap superuser"
                    )));
                }
                if name == session.user() {
                    return Err(SqlError::ObjectInUse(
                        "current user cannot be dropped".into(),
                    ));
                }
                engine
                    .change_catalog(CatalogCommand::DropUser { name: name.clone() })
                    .await?;
            }
            Ok(CommandTag::new("DROP ROLE"))
        }
        Statement::Grant {
            role,
            project,
            users,
        } => {
            for user in users {
                engine
                    .change_catalog(CatalogCommand::Grant {
                        project: project.clone(),
                        user: user.clone(),
                        role: *role,
                    })
                    .await?;
            }
            Ok(CommandTag::new("GRANT"))
        }
        Statement::Revoke {
            role,
            project,
            users,
        } => {
            for user in users {
                let catalog = engine.catalog.snapshot();
                let Some(found) = catalog.project(project) else {
                    return Err(SqlError::UndefinedProject(format!(
                        "project \"{project}\" does not exist"
                    )));
                };
                if &found.owner == user {
                    return Err(SqlError::InvalidGrant(format!(
                        "user \"{user}\" owns project \"{project}\" and stays its data owner"
                    )));
                }
                let current = found.members.get(user).copied();
                match (current, role) {
                    (Some(current), Some(role)) if current != *role => {
                        session.notice(format!(
                            "WARNING: user \"{user}\" is not {} of project \"{project}\" \
                             (they are {}); nothing revoked",
                            with_article(*role),
                            with_article(current)
                        ));
                        continue;
                    }
                    (None, _) => {
                        session.notice(format!(
                            "WARNING: user \"{user}\" is not a member of project \"{project}\"; \
                             nothing revoked"
                        ));
                        // An unknown user is still an error.
                        if catalog.user(user).is_some() {
                            continue;
                        }
                    }
                    _ => {}
                }
                engine
                    .change_catalog(CatalogCommand::Revoke {
                        project: project.clone(),
                        user: user.clone(),
                    })
                    .await?;
            }
            Ok(CommandTag::new("REVOKE"))
        }
        Statement::ShareFeatureGroup { name, with } => {
            engine
                .change_catalog(CatalogCommand::ShareFeatureGroup {
                    project: session.project().to_string(),
                    group: name.clone(),
                    with: with.clone(),
                })
                .await?;
            Ok(CommandTag::new("SHARE FEATURE GROUP"))
        }
        Statement::UnshareFeatureGroup { name, with } => {
            engine
                .change_catalog(CatalogCommand::UnshareFeatureGroup {
                    project: session.project().to_string(),
                    group: name.clone(),
                    with: with.clone(),
                })
                .await?;
            Ok(CommandTag::new("UNSHARE FEATURE GROUP"))
        }
        other => Err(SqlError::Internal(format!(
            "not an access statement: {other:?}"
        ))),
    }
}

/// The catalog command for `CREATE USER`, its name filled in per user.
fn create_user_command(create: &ast::CreateRole) -> SqlResult<CatalogCommand> {
    let unsupported = |option: &str| {
        Err(SqlError::NotSupported(format!(
            "CREATE USER option {option} is not supported; Quiver users take PASSWORD, \
             SUPERUSER and CONNECTION LIMIT, and project roles are granted with GRANT ... ON PROJECT"
        )))
    };
    if create.login == Some(false) {
        return unsupported("NOLOGIN");
    }
    if create.create_db.is_some() {
        return unsupported("CREATEDB");
    }
    if create.create_role.is_some() {
        return unsupported("CREATEROLE");
    }
    if create.replication.is_some() {
        return unsupported("REPLICATION");
    }
    if create.bypassrls.is_some() {
        return unsupported("BYPASSRLS");
    }
    if create.valid_until.is_some() {
        return unsupported("VALID UNTIL");
    }
    if !(create.in_role.is_empty()
        && create.in_group.is_empty()
        && create.role.is_empty()
        && create.user.is_empty()
        && create.admin.is_empty())
    {
        return unsupported("IN ROLE / ROLE / ADMIN");
    }
    Ok(CatalogCommand::CreateUser {
        name: String::new(),
        superuser: create.superuser.unwrap_or(false),
        password: create
            .password
            .as_ref()
            .map(verifier)
            .transpose()?
            .flatten(),
        connection_limit: create
            .connection_limit
            .as_ref()
            .map(connection_limit)
            .transpose()?
            .flatten(),
    })
}

/// What `ALTER USER name ...` changes. A user may change their own password; everything else,
/// and anyone else's password, takes a superuser.
fn user_change(
    session: &Session,
    name: &str,
    operation: &ast::AlterRoleOperation,
) -> SqlResult<UserChange> {
    let catalog = session.engine().catalog.snapshot();
    let superuser = catalog.user(session.user()).is_some_and(|u| u.superuser);
    let ast::AlterRoleOperation::WithOptions { options } = operation else {
        return Err(SqlError::NotSupported(format!(
            "ALTER USER {operation} is not supported; ALTER USER takes PASSWORD, SUPERUSER and \
             CONNECTION LIMIT"
        )));
    };
    let mut change = UserChange::default();
    for option in options {
        match option {
            ast::RoleOption::Password(password) => change.password = Some(verifier(password)?),
            ast::RoleOption::SuperUser(flag) => change.superuser = Some(*flag),
            ast::RoleOption::ConnectionLimit(limit) => {
                change.connection_limit = Some(connection_limit(limit)?)
            }
            ast::RoleOption::Login(true) => {}
            other => {
                return Err(SqlError::NotSupported(format!(
                    "ALTER USER option {other} is not supported"
                )));
            }
        }
    }
    let own_password_only =
        name == session.user() && change.superuser.is_none() && change.connection_limit.is_none();
    if !(superuser || own_password_only) {
        return Err(SqlError::InsufficientPrivilege(format!(
            "only superusers may change role \"{name}\"{}",
            if name == session.user() {
                " beyond its password"
            } else {
                ""
            }
        )));
    }
    if name == quiver_catalog::BOOTSTRAP_NAME && change.superuser == Some(false) {
        return Err(SqlError::InsufficientPrivilege(format!(
            "the bootstrap user \"{name}\" must stay a superuser"
        )));
    }
    Ok(change)
}

/// A password as given: a SCRAM-SHA-256 verifier is stored as it is (as PostgreSQL does with
/// pg_dumpall's output), anything else is hashed into one; `PASSWORD NULL` removes it.
fn verifier(password: &ast::Password) -> SqlResult<Option<ScramVerifier>> {
    let text = match password {
        ast::Password::NullPassword => return Ok(None),
        ast::Password::Password(ast::Expr::Value(value)) => match &value.value {
            ast::Value::SingleQuotedString(text) | ast::Value::EscapedStringLiteral(text) => text,
            ast::Value::Null => return Ok(None),
            other => {
                return Err(SqlError::Syntax(format!(
                    "PASSWORD must be a string literal, found {other}"
                )));
            }
        },
        ast::Password::Password(other) => {
            return Err(SqlError::Syntax(format!(
                "PASSWORD must be a string literal, found {other}"
            )));
        }
    };
    if let Some(verifier) = ScramVerifier::parse(text) {
        return Ok(Some(verifier));
    }
    if text.starts_with("SCRAM-SHA-256$") || (text.len() == 35 && text.starts_with("md5")) {
        return Err(SqlError::InvalidParameter(
            "the password looks like a hashed password but is not a valid SCRAM-SHA-256 \
             verifier (MD5 hashes are not supported)"
                .into(),
        ));
    }
    if text.is_empty() {
        return Err(SqlError::InvalidParameter("empty password".into()));
    }
    let generated = postgres_protocol::password::scram_sha_256(text.as_bytes());
    ScramVerifier::parse(&generated)
        .map(Some)
        .ok_or_else(|| SqlError::Internal("cannot make a SCRAM verifier".into()))
}

/// `CONNECTION LIMIT n`: -1 is no limit, as in PostgreSQL.
fn connection_limit(limit: &ast::Expr) -> SqlResult<Option<u32>> {
    let text = match limit {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::Number(text, _) => text.clone(),
            other => other.to_string(),
        },
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => format!("-{expr}"),
        other => other.to_string(),
    };
    match text.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
        _ => Err(SqlError::InvalidParameter(format!(
            "invalid connection limit: {text} (a count of connections, or -1 for none)"
        ))),
    }
}
