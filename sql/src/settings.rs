//! Per-connection run-time settings: `SET`, `SHOW`, `RESET`, and the ParameterStatus values sent at
//! startup. Names are case-insensitive as in PostgreSQL; `datafusion.*` names configure the
//! session's query engine directly.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{self, Expr, Ident, ObjectName, Value};

use crate::error::{SqlError, SqlResult};
use crate::session::CommandTag;

/// The server version Quiver reports: the PostgreSQL release whose protocol and catalog it follows.
pub const SERVER_VERSION: &str = "15.0";
/// The same release as a number, as `server_version_num` gives it.
const SERVER_VERSION_NUM: &str = "150000";

/// Settings with their defaults, by PostgreSQL's spelling. `report` marks the ones PostgreSQL
/// sends as ParameterStatus at startup.
const DEFAULTS: &[(&str, &str, bool)] = &[
    ("server_version", SERVER_VERSION, true),
    ("server_version_num", SERVER_VERSION_NUM, false),
    ("server_encoding", "UTF8", true),
    ("client_encoding", "UTF8", true),
    ("DateStyle", "ISO, MDY", true),
    ("TimeZone", "UTC", true),
    ("integer_datetimes", "on", true),
    ("standard_conforming_strings", "on", true),
    ("application_name", "", true),
    ("IntervalStyle", "postgres", true),
    ("is_superuser", "on", true),
    ("search_path", "public", false),
    ("extra_float_digits", "1", false),
    ("statement_timeout", "0", false),
    ("transaction_isolation", "read committed", false),
    ("default_transaction_isolation", "read committed", false),
    ("max_identifier_length", "63", false),
    ("bytea_output", "hex", false),
    ("lc_messages", "C", false),
    // Query compilation PostgreSQL may do; asyncpg turns it off at connect.
    ("jit", "off", false),
];

/// Settings that describe the server and cannot be changed by a session.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "max_identifier_length",
];

/// A PostgreSQL time setting: a bare number is milliseconds, or a number with a unit (`ms`, `s`,
/// `min`, `h`, `d`), with or without a space between.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    std::time::Duration::try_from_secs_f64(number * millis / 1_000.0).ok()
}

/// One setting as `pg_catalog.pg_settings` lists it.
#[derive(Debug, Clone)]
pub(crate) struct SettingRow {
    pub name: String,
    pub setting: String,
    pub reset_val: String,
    /// `default` or `session`, as PostgreSQL's `source` says where the value came from.
    pub source: &'static str,
    /// `internal` for the read-only settings, `user` for the others (PostgreSQL's `context`).
    pub context: &'static str,
}

/// A session's settings as its `pg_catalog.pg_settings` shows them: the session publishes them
/// here when they change, the system catalog reads them.
#[derive(Debug, Clone)]
pub(crate) struct SettingsView(Arc<RwLock<Vec<SettingRow>>>);

impl SettingsView {
    pub(crate) fn new(settings: &Settings) -> SettingsView {
        let view = SettingsView(Arc::new(RwLock::new(Vec::new())));
        view.publish(settings);
        view
    }

    pub(crate) fn publish(&self, settings: &Settings) {
        let rows = settings
            .values
            .iter()
            .map(|(key, (name, value))| {
                let reset_val = DEFAULTS
                    .iter()
                    .find(|(default, _, _)| default.eq_ignore_ascii_case(key))
                    .map_or_else(String::new, |(_, value, _)| value.to_string());
                SettingRow {
                    name: name.clone(),
                    source: if *value == reset_val {
                        "default"
                    } else {
                        "session"
                    },
                    context: if READ_ONLY.contains(&key.as_str()) {
                        "internal"
                    } else {
                        "user"
                    },
                    setting: value.clone(),
                    reset_val,
                }
            })
            .collect();
        match self.0.write() {
            Ok(mut published) => *published = rows,
            Err(poisoned) => *poisoned.into_inner() = rows,
        }
    }

    pub(crate) fn rows(&self) -> Vec<SettingRow> {
        match self.0.read() {
            Ok(rows) => rows.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The settings of one session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Keyed by lower-case name; the value keeps the canonical spelling of the name.
    values: BTreeMap<String, (String, String)>,
    /// `statement_timeout` parsed when it is set, as every statement reads it.
    statement_timeout: Option<std::time::Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        let mut settings = Settings {
            values: BTreeMap::new(),
            statement_timeout: None,
        };
        for (name, value, _) in DEFAULTS {
            settings.store(name.to_lowercase(), name.to_string(), value.to_string());
        }
        settings
    }
}

impl Settings {
    /// Reports whether the session's user is a superuser (`is_superuser`, read-only).
    pub(crate) fn set_superuser(&mut self, superuser: bool) {
        let value = if superuser { "on" } else { "off" };
        self.values.insert(
            "is_superuser".into(),
            ("is_superuser".into(), value.to_string()),
        );
    }

    /// `statement_timeout`: `None` when 0 (no limit).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        self.statement_timeout
    }

    /// Records a value (the name lower-case, and canonical).
    fn store(&mut self, key: String, canonical: String, value: String) {
        if key == "statement_timeout" {
            self.statement_timeout = parse_duration(&value).filter(|d| !d.is_zero());
        }
        self.values.insert(key, (canonical, value));
    }

    /// The parameters PostgreSQL reports to a client at startup, with their current values.
    pub fn startup_parameters(&self) -> Vec<(String, String)> {
        DEFAULTS
            .iter()
            .filter(|(_, _, report)| *report)
            .filter_map(|(name, _, _)| self.values.get(&name.to_lowercase()).cloned())
            .collect()
    }

    /// Sets a value directly, e.g. `application_name` from the startup packet.
    pub fn set(&mut self, name: &str, value: &str) -> SqlResult<()> {
        let key = name.to_lowercase();
        if READ_ONLY.contains(&key.as_str()) {
            return Err(SqlError::InvalidParameter(format!(
                "parameter \"{name}\" cannot be changed"
            )));
        }
        if key == "statement_timeout" {
            parse_duration(value).ok_or_else(|| {
                SqlError::InvalidParameter(format!(
                    "invalid value for parameter \"statement_timeout\": \"{value}\" (milliseconds, or a number with unit ms, s, min, h or d)"
                ))
            })?;
        }
        let canonical = self
            .values
            .get(&key)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| unrecognized(name))?;
        self.store(key, canonical, value.to_string());
        Ok(())
    }

    /// Applies a `SET` statement.
    pub fn apply_set(&mut self, set: &ast::Set, context: &SessionContext) -> SqlResult<CommandTag> {
        match set {
            ast::Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = object_name(variable);
                let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
                self.assign(&name, &value, context)?;
            }
            ast::Set::SetTimeZone { value, .. } => {
                self.assign("TimeZone", &expr_text(value), context)?;
            }
            ast::Set::SetNames { charset_name, .. } => {
                self.assign("client_encoding", &charset_name.value, context)?;
            }
            other => {
                return Err(SqlError::NotSupported(format!("{other} is not supported")));
            }
        }
        Ok(CommandTag::new("SET"))
    }

    fn assign(&mut self, name: &str, value: &str, context: &SessionContext) -> SqlResult<()> {
        let key = name.to_lowercase();
        if key.starts_with("datafusion.") {
            let state = context.state_ref();
            let mut state = state.write();
            return state
                .config_mut()
                .options_mut()
                .set(&key, value)
                .map_err(|e| SqlError::InvalidParameter(e.to_string()));
        }
        if value.eq_ignore_ascii_case("default") {
            return self.reset_one(name, context);
        }
        match key.as_str() {
            "client_encoding"
                if !matches!(value.to_uppercase().as_str(), "UTF8" | "UTF-8" | "UNICODE") =>
            {
                return Err(SqlError::NotSupported(format!(
                    "client_encoding \"{value}\" is not supported; Quiver speaks UTF8"
                )));
            }
            "timezone" => {
                let state = context.state_ref();
                let mut state = state.write();
                state
                    .config_mut()
                    .options_mut()
                    .set("datafusion.execution.time_zone", value)
                    .map_err(|e| {
                        SqlError::InvalidParameter(format!(
                            "invalid value for parameter \"TimeZone\": \"{value}\": {e}"
                        ))
                    })?;
            }
            _ => {}
        }
        self.set(name, value)
    }

    /// Applies a `RESET` statement.
    pub fn apply_reset(
        &mut self,
        reset: &ast::ResetStatement,
        context: &SessionContext,
    ) -> SqlResult<CommandTag> {
        match &reset.reset {
            ast::Reset::ALL => {
                let superuser = self.get("is_superuser") == Some("on");
                *self = Settings::default();
                self.set_superuser(superuser);
                reset_engine_time_zone(context);
            }
            ast::Reset::ConfigurationParameter(name) => {
                self.reset_one(&object_name(name), context)?
            }
        }
        Ok(CommandTag::new("RESET"))
    }

    fn reset_one(&mut self, name: &str, context: &SessionContext) -> SqlResult<()> {
        let key = name.to_lowercase();
        if key == "timezone" {
            reset_engine_time_zone(context);
        }
        let (canonical, default) = DEFAULTS
            .iter()
            .find(|(n, _, _)| n.to_lowercase() == key)
            .map(|(n, v, _)| (n.to_string(), v.to_string()))
            .ok_or_else(|| unrecognized(name))?;
        self.store(key, canonical, default);
        Ok(())
    }

    /// The value `SHOW name` prints; `datafusion.*` names are read from the session's engine.
    pub fn show(&self, variable: &[Ident], context: &SessionContext) -> SqlResult<String> {
        let name = Settings::display_name(variable);
        if name.starts_with("datafusion.") {
            return context
                .state()
                .config()
                .options()
                .entries()
                .into_iter()
                .find(|entry| entry.key == name)
                .map(|entry| entry.value.unwrap_or_default())
                .ok_or_else(|| unrecognized(&name));
        }
        self.values
            .get(&name.to_lowercase())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| unrecognized(&name))
    }

    /// The value of a setting by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&name.to_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// Replaces each `set_config('name', 'value', is_local)` with the value it returns, and
    /// returns the session-wide changes (`is_local` false) for the caller to make when the
    /// statement executes. A transaction-local change ends with its statement here, as outside
    /// a transaction block in PostgreSQL, so it changes nothing.
    pub fn take_set_configs(statement: &mut ast::Statement) -> Vec<(String, String)> {
        let mut changes = Vec::new();
        let _ = ast::visit_expressions_mut(statement, |expr| {
            if let Some(args) = literal_call(expr, "set_config")
                && let [
                    Value::SingleQuotedString(name),
                    Value::SingleQuotedString(value),
                    Value::Boolean(local),
                ] = args.as_slice()
            {
                if !local {
                    changes.push((name.clone(), value.clone()));
                }
                *expr = Expr::Value(Value::SingleQuotedString(value.clone()).into());
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        changes
    }

    /// Replaces `current_setting('name' [, missing_ok])` with the setting's value, as the
    /// statement is planned: the value cannot change while one statement runs. An unknown name
    /// is 42704, as in PostgreSQL, unless `missing_ok` is true (then NULL).
    pub fn substitute_current_settings(
        &self,
        statement: &mut ast::Statement,
        context: &SessionContext,
    ) -> SqlResult<()> {
        let mut failure = None;
        let _ = ast::visit_expressions_mut(statement, |expr| {
            let (name, missing_ok) = match literal_call(expr, "current_setting").as_deref() {
                Some([Value::SingleQuotedString(name)]) => (name.clone(), false),
                Some([Value::SingleQuotedString(name), Value::Boolean(missing_ok)]) => {
                    (name.clone(), *missing_ok)
                }
                _ => return std::ops::ControlFlow::Continue(()),
            };
            let variable: Vec<Ident> = name.split('.').map(Ident::new).collect();
            let value = match self.show(&variable, context) {
                Ok(value) => Value::SingleQuotedString(value),
                Err(_) if missing_ok => Value::Null,
                Err(error) => {
                    failure = Some(error);
                    return std::ops::ControlFlow::Break(());
                }
            };
            *expr = Expr::Value(value.into());
            std::ops::ControlFlow::Continue(())
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The column name `SHOW` uses: the variable as written, lower-cased. sqlparser hands over
    /// the words of `SHOW TIME ZONE` and the parts of `SHOW datafusion.execution.batch_size` alike.
    pub fn display_name(variable: &[Ident]) -> String {
        let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
        match words.join(" ").as_str() {
            "time zone" => "TimeZone".into(),
            "transaction isolation level" => "transaction_isolation".into(),
            _ => words.join("."),
        }
    }
}

/// The arguments of a call to the function `name` (maybe schema-qualified) when all are literals.
fn literal_call(expr: &Expr, name: &str) -> Option<Vec<Value>> {
    let Expr::Function(call) = expr else {
        return None;
    };
    let named = call
        .name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .is_some_and(|ident| ident.value.eq_ignore_ascii_case(name));
    let ast::FunctionArguments::List(list) = &call.args else {
        return None;
    };
    if !named {
        return None;
    }
    list.args
        .iter()
        .map(|arg| match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(value))) => {
                Some(value.value.clone())
            }
            _ => None,
        })
        .collect()
}

/// The query engine's time zone follows `TimeZone`; its default is unset, which DataFusion reads
/// as UTC, matching `TimeZone`'s default.
fn reset_engine_time_zone(context: &SessionContext) {
    let state = context.state_ref();
    let mut state = state.write();
    state.config_mut().options_mut().execution.time_zone = None;
}

fn unrecognized(name: &str) -> SqlError {
    SqlError::UndefinedObject(format!("unrecognized configuration parameter \"{name}\""))
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .filter_map(|part| part.as_ident())
        .map(|i| i.value.clone())
        .collect::<Vec<_>>()
        .join(".")
}

fn expr_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.to_string(),
            // `true`/`false` as written: DataFusion's options parse these, not `on`/`off`.
            Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_postgres_reads_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5 min"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 weeks"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn statement_timeout_follows_set_and_reset() {
        use std::time::Duration;
        let mut settings = Settings::default();
        assert_eq!(settings.statement_timeout(), None);
        settings.set("Statement_Timeout", "2s").unwrap();
        assert_eq!(settings.statement_timeout(), Some(Duration::from_secs(2)));
        assert!(settings.set("statement_timeout", "soon").is_err());
        assert_eq!(settings.statement_timeout(), Some(Duration::from_secs(2)));
        settings.set("statement_timeout", "0").unwrap();
        assert_eq!(settings.statement_timeout(), None);
        settings.set("statement_timeout", "250").unwrap();
        let context = SessionContext::new();
        let reset = |sql: &str| {
            let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
            match datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
                .unwrap()
                .remove(0)
            {
                ast::Statement::Reset(reset) => reset,
                other => panic!("{other}"),
            }
        };
        settings
            .apply_reset(&reset("RESET statement_timeout"), &context)
            .unwrap();
        assert_eq!(settings.statement_timeout(), None);
        settings.set("statement_timeout", "250").unwrap();
        settings.apply_reset(&reset("RESET ALL"), &context).unwrap();
        assert_eq!(settings.statement_timeout(), None);
    }

    #[test]
    fn names_are_case_insensitive_and_keep_their_canonical_spelling() {
        let mut settings = Settings::default();
        settings.set("datestyle", "ISO, DMY").unwrap();
        assert_eq!(settings.get("DATESTYLE"), Some("ISO, DMY"));
        assert!(
            settings
                .startup_parameters()
                .contains(&("DateStyle".to_string(), "ISO, DMY".to_string()))
        );
    }

    #[test]
    fn unknown_and_read_only_settings_are_errors() {
        let mut settings = Settings::default();
        assert!(matches!(
            settings.set("no_such_thing", "1"),
            Err(SqlError::UndefinedObject(_))
        ));
        assert!(matches!(
            settings.set("server_version", "9"),
            Err(SqlError::InvalidParameter(_))
        ));
    }
}
