//! The protocol edge of error handling: every error becomes an ErrorResponse with its SQLSTATE.

use pgwire::error::{ErrorInfo, PgWireError};
use quiver_catalog::CatalogError;
use quiver_sql::SqlError;
use quiver_storage::StorageError;

/// The SQLSTATE of an error from the SQL layer.
pub fn sqlstate(error: &SqlError) -> &'static str {
    match error {
        SqlError::Syntax(_) => "42601",
        SqlError::UndefinedTable(_) => "42P01",
        SqlError::UndefinedColumn(_) => "42703",
        SqlError::UndefinedProject(_) => "3D000",
        SqlError::Duplicate(_) => "42P07",
        SqlError::DuplicateObject(_) => "42710",
        SqlError::DatatypeMismatch(_) => "42804",
        SqlError::InvalidText(_) => "22P02",
        SqlError::StringTooLong(_) => "22001",
        SqlError::NotNull(_) => "23502",
        SqlError::UndefinedObject(_) => "42704",
        SqlError::UndefinedFunction(_) => "42883",
        SqlError::DivisionByZero => "22012",
        SqlError::BadCopyFormat(_) => "22P04",
        SqlError::InvalidParameter(_) => "22023",
        SqlError::ObjectInUse(_) => "55006",
        SqlError::PrerequisiteState(_) => "55000",
        SqlError::DependentObjects(_) => "2BP01",
        SqlError::NotSupported(_) => "0A000",
        SqlError::InsufficientPrivilege(_) => "42501",
        SqlError::InvalidGrant(_) => "0LP01",
        SqlError::Canceled | SqlError::StatementTimeout => "57014",
        SqlError::InFailedTransaction => "25P02",
        SqlError::NoActiveTransaction(_) => "25P01",
        SqlError::SerializationFailure(_) => "40001",
        SqlError::UndefinedCursor(_) => "34000",
        SqlError::UndefinedSavepoint(_) => "3B001",
        SqlError::DuplicateCursor(_) => "42P03",
        SqlError::OutOfMemory(_) => "53200",
        SqlError::Data(_) => "22000",
        SqlError::Internal(_) => "XX000",
        SqlError::Context { cause, .. } => sqlstate(cause),
        SqlError::Storage(storage) => match storage {
            // The data of a relation the catalog still names is gone (a concurrent DROP or
            // online = false, or a store emptied behind Quiver's back).
            StorageError::MissingTable(_) | StorageError::MissingOnlineTable(_) => "42P01",
            // Disk, object store or network: PostgreSQL's io_error.
            StorageError::Io { .. } | StorageError::ObjectStore(_) => "58030",
            StorageError::Schema(_) | StorageError::UnsupportedFormat(_) => "0A000",
            StorageError::InvalidLocation(_) => "22023",
            StorageError::NullNotAllowed(_) => "22004",
            StorageError::Delta(_)
            | StorageError::Query(_)
            | StorageError::Internal(_)
            | StorageError::Arrow(_)
            | StorageError::Parquet(_) => "XX000",
        },
        SqlError::Catalog(catalog) => match catalog {
            CatalogError::Duplicate(_) | CatalogError::DuplicateColumn { .. } => "42P07",
            CatalogError::UndefinedColumn { .. } => "42703",
            CatalogError::UndefinedProject(_) => "3D000",
            CatalogError::UndefinedFeatureGroup(_)
            | CatalogError::UndefinedVersion { .. }
            | CatalogError::UndefinedObject { .. }
            | CatalogError::UndefinedRelation(_) => "42P01",
            CatalogError::DependentObjects(_) => "2BP01",
            CatalogError::UndefinedRole(_) => "42704",
            CatalogError::InvalidShare(_) | CatalogError::InvalidShard(_) => "22023",
            // cannot_connect_now: the cluster has no leader or quorum at the moment.
            CatalogError::Unavailable(_) => "57P03",
            CatalogError::Rejected(_) => "55000",
            CatalogError::Io { .. } | CatalogError::CorruptLog { .. } => "XX000",
        },
    }
}

/// The ERROR-severity ErrorResponse fields for a SQL-layer error.
pub fn error_info(error: SqlError) -> ErrorInfo {
    ErrorInfo::new(
        "ERROR".to_string(),
        sqlstate(&error).to_string(),
        error.to_string(),
    )
}

/// A SQL-layer error as a protocol error.
pub fn to_pgwire(error: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

/// An ErrorResponse with the given severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_with_context_keeps_its_causes_sqlstate() {
        let unavailable = SqlError::Catalog(CatalogError::Unavailable("no leader".into()))
            .context("COMMIT stopped part-way at \"public.a\"");
        assert_eq!(sqlstate(&unavailable), "57P03");
        assert_eq!(
            unavailable.to_string(),
            "COMMIT stopped part-way at \"public.a\": no leader"
        );
    }
}
