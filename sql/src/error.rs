//! The SQL layer's error type. Variants are kinds a user can act on; the server maps each to its
//! SQLSTATE at the protocol edge.

use datafusion::error::DataFusionError;
use quiver_catalog::CatalogError;
use quiver_storage::StorageError;

/// Errors from parsing, planning or executing a statement.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// 42601: the statement does not parse.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// 42P01: an unknown table, feature group or project object.
    #[error("{0}")]
    UndefinedTable(String),
    /// 42703: an unknown column.
    #[error("{0}")]
    UndefinedColumn(String),
    /// 3D000: an unknown project (database).
    #[error("{0}")]
    UndefinedProject(String),
    /// 42P07: the object exists already.
    #[error("{0}")]
    Duplicate(String),
    /// 42710: an object that is not a relation (a cluster node, ...) exists already.
    #[error("{0}")]
    DuplicateObject(String),
    /// 42804: a value or expression of the wrong type.
    #[error("{0}")]
    DatatypeMismatch(String),
    /// 22P02: text that is not a valid value of its type.
    #[error("{0}")]
    InvalidText(String),
    /// 22001: a string too long for its VARCHAR(n).
    #[error("{0}")]
    StringTooLong(String),
    /// 23502: NULL in a NOT NULL column.
    #[error("{0}")]
    NotNull(String),
    /// 42883: an unknown function, or no function of that name takes these argument types.
    #[error("{0}")]
    UndefinedFunction(String),
    /// 22012: division by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// 22P04: COPY data that is not in the announced format (wrong column count, bad signature,
    /// data ending inside a row).
    #[error("{0}")]
    BadCopyFormat(String),
    /// 42704: an unknown object that is not a relation (a setting, a cluster node).
    #[error("{0}")]
    UndefinedObject(String),
    /// 22023: an option or argument with a bad value.
    #[error("{0}")]
    InvalidParameter(String),
    /// 55006: the object is in use (e.g. the project of the current connection).
    #[error("{0}")]
    ObjectInUse(String),
    /// 55000: the object is not in the state the statement needs (e.g. a feature group that is
    /// not online, served through a feature view).
    #[error("{0}")]
    PrerequisiteState(String),
    /// 2BP01: dependent objects prevent a drop.
    #[error("{0}")]
    DependentObjects(String),
    /// 0A000: valid SQL that Quiver does not support.
    #[error("{0}")]
    NotSupported(String),
    /// 42501: the user's role does not allow the statement, or they are not a member of the
    /// project.
    #[error("permission denied: {0}")]
    InsufficientPrivilege(String),
    /// 0LP01: a GRANT or REVOKE that cannot be done (e.g. revoking the project owner).
    #[error("{0}")]
    InvalidGrant(String),
    /// 25P02: a statement failed earlier in the transaction block.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    /// 25P01: a statement that needs a transaction block ran outside one.
    #[error("{0}")]
    NoActiveTransaction(String),
    /// 40001: a transaction block's writes can no longer be applied as they were made.
    #[error("{0}")]
    SerializationFailure(String),
    /// 3B001: no savepoint of that name.
    #[error("{0}")]
    UndefinedSavepoint(String),
    /// 34000: no cursor of that name.
    #[error("{0}")]
    UndefinedCursor(String),
    /// 42P03: a cursor of that name is already open.
    #[error("{0}")]
    DuplicateCursor(String),
    /// 57014: the statement was canceled.
    #[error("canceling statement due to user request")]
    Canceled,
    /// 57014: the statement ran longer than `statement_timeout`.
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    /// 22000-class: a data error raised while executing a query.
    /// 53200: a query needed more memory than `--query-memory-mb` leaves it, spilling included.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Data(String),
    /// XX000: a bug or an environment failure, not the user's doing.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error with what was being done when it happened; its SQLSTATE is the cause's.
    #[error("{context}: {cause}")]
    Context {
        context: String,
        cause: Box<SqlError>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A SQL result.
pub type SqlResult<T> = Result<T, SqlError>;

impl SqlError {
    /// This error, saying what was being done; the SQLSTATE stays the cause's.
    pub fn context(self, context: impl Into<String>) -> SqlError {
        SqlError::Context {
            context: context.into(),
            cause: Box::new(self),
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(error: DataFusionError) -> Self {
        classify_datafusion(error)
    }
}

/// Turns a DataFusion error into the kind a PostgreSQL user expects. DataFusion reports most
/// failures as messages, so the kinds that matter to users are recognised by their shape.
fn classify_datafusion(error: DataFusionError) -> SqlError {
    use datafusion::arrow::error::ArrowError;
    use datafusion::common::SchemaError;
    match error {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            classify_datafusion(*inner)
        }
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(inner) => classify_datafusion(inner),
            Err(shared) => SqlError::Internal(shared.to_string()),
        },
        DataFusionError::External(external) => match external.downcast::<SqlError>() {
            Ok(sql_error) => *sql_error,
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(df) => classify_datafusion(*df),
                Err(other) => SqlError::Internal(other.to_string()),
            },
        },
        DataFusionError::SQL(parser_error, _) => {
            SqlError::Syntax(strip_prefix(&parser_error.to_string()))
        }
        DataFusionError::SchemaError(schema_error, _) => match *schema_error {
            SchemaError::FieldNotFound { field, .. } => {
                SqlError::UndefinedColumn(format!("column \"{}\" does not exist", field.name))
            }
            other => SqlError::DatatypeMismatch(other.to_string()),
        },
        DataFusionError::ArrowError(arrow_error, _) => match *arrow_error {
            ArrowError::CastError(message) | ArrowError::ParseError(message) => {
                SqlError::InvalidText(message)
            }
            ArrowError::DivideByZero => SqlError::DivisionByZero,
            ArrowError::ExternalError(external) => match external.downcast::<SqlError>() {
                Ok(sql_error) => *sql_error,
                Err(other) => SqlError::Internal(other.to_string()),
            },
            other => SqlError::Data(other.to_string()),
        },
        DataFusionError::NotImplemented(message) => SqlError::NotSupported(message),
        DataFusionError::Plan(message) => classify_plan_message(message),
        DataFusionError::Execution(message) => classify_execution_message(message),
        DataFusionError::ResourcesExhausted(message) => SqlError::OutOfMemory(message),
        other => SqlError::Internal(other.to_string()),
    }
}

fn classify_plan_message(message: String) -> SqlError {
    if message.contains("not found") && message.starts_with("table") {
        // DataFusion: "table 'quiver.public.nope' not found"
        let name = message
            .split('\'')
            .nth(1)
            .and_then(|q| q.rsplit('.').next())
            .unwrap_or("?")
            .to_string();
        SqlError::UndefinedTable(format!("relation \"{name}\" does not exist"))
    } else if message.contains("Cannot cast") || message.contains("Cannot automatically convert") {
        SqlError::DatatypeMismatch(message)
    } else if message.contains("Inserting query must have the same schema")
        || message.contains("has more expressions than target columns")
        || message.contains("Column count doesn't match")
        || message.contains("Inconsistent data length across values list")
    {
        SqlError::Syntax(message)
    } else if message.contains("No function matches") || message.contains("Invalid function") {
        SqlError::UndefinedFunction(message)
    } else {
        SqlError::DatatypeMismatch(message)
    }
}

fn classify_execution_message(message: String) -> SqlError {
    if message.contains("Cannot cast") || message.contains("Cannot parse") {
        SqlError::InvalidText(message)
    } else if message.contains("Divide by zero") || message.contains("division by zero") {
        SqlError::DivisionByZero
    } else {
        SqlError::Data(message)
    }
}

fn strip_prefix(message: &str) -> String {
    message
        .trim_start_matches("sql parser error: ")
        .trim_start_matches("SQL error: ")
        .to_string()
}
