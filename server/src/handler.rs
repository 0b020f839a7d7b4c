//! The pgwire handlers: they translate between protocol messages and the SQL layer's sessions and
//! hold no feature-store logic of their own.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{self, Ident};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::stmt::StoredStatement;
use pgwire::api::store::Entry;
use pgwire::api::store::{MemPortalStore, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, DEFAULT_NAME, PgWireServerHandlers, Type,
};
use pgwire::error::ErrorInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, Flush, Parse, ParseComplete};
use pgwire::messages::response::NoticeResponse;
use quiver_sql::{CommandTag, CopyFormat, CopyIn, Engine, Output, Prepared, Session, SqlError};
use tokio::sync::Mutex;

use crate::cancel::{CancelSignal, Cancellation, QuiverCancelHandler, cancellable};
use crate::connection::FlushRequest;
use crate::errors::{error_response, to_pgwire};
use crate::found_rows;
use crate::startup::{AccessPolicy, Startup};

/// The session of one connection, kept in the connection's extensions.
struct SessionSlot(Arc<Mutex<Session>>);

/// A connection-local mutex's guard: a panic while it was held leaves plain data behind, which
/// is still the connection's.
fn lock_even_if_poisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A COPY FROM STDIN waiting for its data, kept in the connection's extensions.
#[derive(Default)]
struct PendingCopy(std::sync::Mutex<Option<Box<CopyIn>>>);

impl PendingCopy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<CopyIn>>> {
        lock_even_if_poisoned(&self.0)
    }
}

/// The names of the statements the client prepared with Parse, kept in the connection's
/// extensions so that `DEALLOCATE ALL` can drop them all.
#[derive(Default)]
struct PreparedNames(std::sync::Mutex<BTreeSet<String>>);

impl PreparedNames {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        lock_even_if_poisoned(&self.0)
    }
}

/// `DEALLOCATE [PREPARE] name | ALL`: drops prepared statements of the extended protocol.
fn deallocate<C>(client: &C, name: &Ident) -> PgWireResult<Response>
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore,
{
    let names = client.session_extensions().get::<PreparedNames>();
    if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
        let all = names.map(|names| std::mem::take(&mut *names.lock()));
        for name in all.into_iter().flatten() {
            client.portal_store().rm_statement(&name);
        }
        return Ok(Response::Execution(Tag::new("DEALLOCATE ALL")));
    }
    if client.portal_store().get_statement(&name.value).is_none() {
        return Err(error_response(
            "ERROR",
            "26000",
            format!("prepared statement \"{}\" does not exist", name.value),
        ));
    }
    client.portal_store().rm_statement(&name.value);
    if let Some(names) = names {
        names.lock().remove(&name.value);
    }
    Ok(Response::Execution(Tag::new("DEALLOCATE")))
}

/// The cursors this connection made portals for, kept in the connection's extensions.
#[derive(Default)]
struct CursorPortals(std::sync::Mutex<BTreeSet<String>>);

impl CursorPortals {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        lock_even_if_poisoned(&self.0)
    }
}

/// After a statement that opens or closes cursors, makes the protocol's portals match the
/// session's cursors: a declared cursor is also a portal of its name, as in PostgreSQL, which
/// clients describe (psycopg's server-side cursors) or execute (the rest of its rows).
async fn sync_cursor_portals<C>(
    client: &C,
    session: &Mutex<Session>,
    statement: &quiver_sql::Statement,
) -> PgWireResult<()>
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore,
{
    let quiver_sql::Statement::Sql(sql) = statement else {
        return Ok(());
    };
    // The simple-query handler's client is generic over its store's statement type; the store
    // of this server's connections holds our prepared statements.
    let Some(store) = client
        .portal_store()
        .as_any()
        .downcast_ref::<MemPortalStore<PreparedStatement>>()
    else {
        return Err(error_response(
            "ERROR",
            "XX000",
            "the connection's portal store holds other statements".into(),
        ));
    };
    let declared: Vec<Ident> = match sql.as_ref() {
        ast::Statement::Declare { stmts } => {
            stmts.iter().flat_map(|d| d.names.iter().cloned()).collect()
        }
        ast::Statement::Close { .. }
        | ast::Statement::Commit { .. }
        | ast::Statement::Rollback { .. } => Vec::new(),
        _ => return Ok(()),
    };
    let Some(portals) = client.session_extensions().get::<CursorPortals>() else {
        return Ok(());
    };
    let session = session.lock().await;
    let closed: Vec<String> = portals
        .lock()
        .iter()
        .filter(|name| !session.has_cursor(name))
        .cloned()
        .collect();
    for name in closed {
        store.rm_portal(&name);
        portals.lock().remove(&name);
    }
    for name in declared {
        if !session.has_cursor(&name.value) {
            continue;
        }
        let fetch_rest = quiver_sql::Statement::Sql(Box::new(ast::Statement::Fetch {
            name: name.clone(),
            direction: ast::FetchDirection::All,
            position: ast::FetchPosition::From,
            into: None,
        }));
        let prepared = session.prepare(fetch_rest).await.map_err(to_pgwire)?;
        let result_fields = prepared
            .result_schema()
            .map(ResultFields::new)
            .transpose()?;
        let statement = StoredStatement::new(
            name.value.clone(),
            PreparedStatement {
                prepared: Arc::new(prepared),
                parameter_types: Vec::new(),
                result_fields,
            },
            Vec::new(),
        );
        store.put_portal(Arc::new(Portal::new_cursor(
            name.value.clone(),
            Arc::new(statement),
        )));
        portals.lock().insert(name.value);
    }
    Ok(())
}

/// Whether the session has no transaction block open, after a COMMIT or ROLLBACK (a ROLLBACK TO
/// SAVEPOINT keeps it open). Called once the statement has released the session.
fn session_block_ended<C: ClientInfo>(client: &C) -> bool {
    session_of(client)
        .ok()
        .and_then(|session| {
            session
                .try_lock()
                .ok()
                .map(|session| session.transaction_block().is_none())
        })
        .unwrap_or(true)
}

/// The receiving end of a session's NOTICE messages.
struct NoticeSlot(Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>);

/// Runs a statement while forwarding the NOTICE messages it sends, each as soon as it is sent.
async fn with_notices<C, T>(client: &mut C, work: impl Future<Output = T>) -> PgWireResult<T>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let Some(slot) = client
        .session_extensions()
        .get::<NoticeSlot>()
        .map(|slot| slot.0.clone())
    else {
        return Ok(work.await);
    };
    let mut notices = slot.lock().await;
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => {
                while let Ok(message) = notices.try_recv() {
                    send_notice(client, message, false).await?;
                }
                return Ok(result);
            }
            Some(message) = notices.recv() => send_notice(client, message, true).await?,
        }
    }
}

async fn send_notice<C>(client: &mut C, message: String, now: bool) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let notice = NoticeResponse::from(ErrorInfo::new("NOTICE".into(), "00000".into(), message));
    client
        .feed(PgWireBackendMessage::NoticeResponse(notice))
        .await?;
    if now {
        // Progress is worth nothing late: out it goes, not at the next ReadyForQuery.
        if let Some(request) = client.session_extensions().get::<Arc<FlushRequest>>() {
            request.request();
        }
        client.flush().await?;
    }
    Ok(())
}

fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Mutex<Session>>> {
    client
        .session_extensions()
        .get::<SessionSlot>()
        .map(|slot| slot.0.clone())
        .ok_or_else(|| {
            error_response(
                "ERROR",
                "08P01",
                "no session: the startup did not complete".into(),
            )
        })
}

/// All handlers of the server, sharing one engine.
pub struct QuiverHandlers {
    query: Arc<QueryHandler>,
    startup: Arc<Startup>,
    cancel: Arc<QuiverCancelHandler>,
}

impl QuiverHandlers {
    pub fn new(engine: Arc<Engine>, policy: AccessPolicy) -> Result<Self, String> {
        let connections = Arc::new(ConnectionManager::new());
        let cancellation = Cancellation::new(connections.clone());
        Ok(QuiverHandlers {
            query: Arc::new(QueryHandler {
                parser: Arc::new(QuiverQueryParser),
            }),
            startup: Arc::new(Startup::new(
                engine,
                connections,
                cancellation.clone(),
                policy,
            )?),
            cancel: Arc::new(QuiverCancelHandler(cancellation)),
        })
    }
}

impl PgWireServerHandlers for QuiverHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.query.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Keeps an opened session in the connection's extensions, with the per-connection state the
/// query handlers keep beside it.
pub fn attach_session<C: ClientInfo>(client: &C, mut session: Session) {
    let notices = session.subscribe_notices();
    let extensions = client.session_extensions();
    extensions.insert(NoticeSlot(Arc::new(Mutex::new(notices))));
    extensions.insert(SessionSlot(Arc::new(Mutex::new(session))));
    extensions.insert(PendingCopy::default());
    extensions.insert(PreparedNames::default());
    extensions.insert(CursorPortals::default());
}

/// A statement prepared by the extended protocol's Parse.
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    prepared: Arc<Prepared>,
    parameter_types: Vec<Option<DataType>>,
    /// The row description in all-text and all-binary form, made once: a serving client
    /// describes and executes the same statement many times.
    result_fields: Option<ResultFields>,
}

#[derive(Debug, Clone)]
struct ResultFields {
    schema: SchemaRef,
    text: Arc<Vec<FieldInfo>>,
    binary: Arc<Vec<FieldInfo>>,
}

impl ResultFields {
    fn new(schema: SchemaRef) -> PgWireResult<Self> {
        Ok(ResultFields {
            text: Arc::new(pg_fields(&schema, &Format::UnifiedText)?),
            binary: Arc::new(pg_fields(&schema, &Format::UnifiedBinary)?),
            schema,
        })
    }

    /// The fields of `schema` in `format`, from the cache when they are the prepared ones.
    fn get(&self, schema: &SchemaRef, format: &Format) -> Option<Arc<Vec<FieldInfo>>> {
        if !Arc::ptr_eq(schema, &self.schema) && schema.fields() != self.schema.fields() {
            return None;
        }
        match format {
            Format::UnifiedText => Some(self.text.clone()),
            Format::UnifiedBinary => Some(self.binary.clone()),
            Format::Individual(_) => None,
        }
    }
}

/// Parses and plans statements for the extended protocol, in the connection's own session.
pub struct QuiverQueryParser;

#[async_trait]
impl QueryParser for QuiverQueryParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PreparedStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = quiver_sql::parse(sql).map_err(|e| to_pgwire(SqlError::from(e)))?;
        if statements.len() > 1 {
            return Err(error_response(
                "ERROR",
                "42601",
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let session = session_of(client)?;
        let prepared = {
            let mut session = session.lock().await;
            match session.prepare(statement).await {
                Ok(prepared) => prepared,
                Err(error) => {
                    session.note_failure();
                    return Err(to_pgwire(error));
                }
            }
        };
        let parameter_types = prepared.parameter_types().map_err(to_pgwire)?;
        let result_fields = prepared
            .result_schema()
            .map(ResultFields::new)
            .transpose()?;
        Ok(Some(PreparedStatement {
            prepared: Arc::new(prepared),
            parameter_types,
            result_fields,
        }))
    }

    fn get_parameter_types(&self, statement: &PreparedStatement) -> PgWireResult<Vec<Type>> {
        statement
            .parameter_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if let Some(declared) = statement.prepared.declared_parameter_type(i + 1) {
                    return Ok(declared.clone());
                }
                match t {
                    Some(data_type) => arrow_pg::datatypes::into_pg_type(data_type),
                    None => Ok(Type::UNKNOWN),
                }
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        statement: &PreparedStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let Some(fields) = &statement.result_fields else {
            return Ok(Vec::new());
        };
        let format = format.unwrap_or(&Format::UnifiedText);
        match fields.get(&fields.schema, format) {
            Some(cached) => Ok(cached.as_ref().clone()),
            None => pg_fields(&fields.schema, format),
        }
    }
}

/// The RowDescription of a result: its columns' wire types, under the names PostgreSQL gives
/// them (two columns may share one; see `quiver_sql::display_name`).
fn pg_fields(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, None)?;
    Ok(fields
        .into_iter()
        .map(|field| {
            let shown = quiver_sql::display_name(field.name());
            if shown == field.name() {
                return field;
            }
            FieldInfo::new(
                shown.to_string(),
                field.table_id(),
                field.column_id(),
                field.datatype().clone(),
                field.format(),
            )
            .with_format_options(field.format_options().clone())
            .with_type_size(field.type_size())
        })
        .collect())
}

/// Runs statements for both protocols and receives COPY data.
pub struct QueryHandler {
    parser: Arc<QuiverQueryParser>,
}

impl QueryHandler {
    /// Turns a statement's output into a protocol response.
    fn respond<C: ClientInfo>(
        &self,
        client: &C,
        output: Output,
        format: &Format,
        prepared_fields: Option<&ResultFields>,
        deadline: Option<tokio::time::Instant>,
    ) -> PgWireResult<Response> {
        let (stream, command) = match output {
            Output::Rows { stream } => (stream, "SELECT"),
            Output::Found(found) if found_rows::encodable(&found) => {
                let fields = result_fields(found.schema(), format, prepared_fields)?;
                let rows = found_rows::data_rows(&found, &fields)?;
                let mut response =
                    QueryResponse::new(fields, futures::stream::iter(rows.into_iter().map(Ok)));
                response.set_command_tag("SELECT");
                return Ok(Response::Query(response));
            }
            Output::Found(found) => (found.into_stream().map_err(to_pgwire)?, "SELECT"),
            Output::Fetched { stream } => (stream, "FETCH"),
            // Transaction blocks: the protocol reports the status after each statement.
            Output::Command(tag) if tag.command == "BEGIN" => {
                return Ok(Response::TransactionStart(command_tag(&tag)));
            }
            Output::Command(tag)
                if (tag.command == "COMMIT" || tag.command == "ROLLBACK")
                    && session_block_ended(client) =>
            {
                return Ok(Response::TransactionEnd(command_tag(&tag)));
            }
            Output::Command(tag) => return Ok(Response::Execution(command_tag(&tag))),
            Output::CopyIn(copy) => {
                let columns = copy.columns();
                let copy_format = wire_format(copy.format());
                let pending = client
                    .session_extensions()
                    .get_or_insert_with(PendingCopy::default);
                *pending.lock() = Some(copy);
                return Ok(Response::CopyIn(CopyResponse::new(
                    copy_format,
                    columns,
                    futures::stream::empty(),
                )));
            }
            Output::CopyOut {
                columns,
                format: copy_format,
                lines,
            } => {
                let data =
                    cancellable(lines, cancel_receiver(client)?, deadline).map(|line| match line {
                        Ok(bytes) => Ok(CopyData::new(Bytes::from(bytes))),
                        Err(e) => Err(to_pgwire(e)),
                    });
                return Ok(Response::CopyOut(CopyResponse::new(
                    wire_format(copy_format),
                    columns,
                    data,
                )));
            }
        };
        self.respond_rows(client, stream, command, format, prepared_fields, deadline)
    }

    /// Rows streamed to the client, ended with `<command> n`.
    fn respond_rows<C: ClientInfo>(
        &self,
        client: &C,
        stream: SendableRecordBatchStream,
        command: &str,
        format: &Format,
        prepared_fields: Option<&ResultFields>,
        deadline: Option<tokio::time::Instant>,
    ) -> PgWireResult<Response> {
        let fields = result_fields(&stream.schema(), format, prepared_fields)?;
        let row_fields = fields.clone();
        let batches = cancellable(
            stream.map(|batch| batch.map_err(SqlError::from)),
            cancel_receiver(client)?,
            deadline,
        );
        let rows = batches
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                    Ok(batch) => arrow_pg::datatypes::encode_recordbatch(row_fields.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(to_pgwire(e)))),
                };
                futures::stream::iter(rows)
            })
            .flatten();
        let mut response = QueryResponse::new(fields, rows);
        response.set_command_tag(command);
        Ok(Response::Query(response))
    }
}

/// The row description of a result, from the prepared statement's when it is the same.
fn result_fields(
    schema: &SchemaRef,
    format: &Format,
    prepared_fields: Option<&ResultFields>,
) -> PgWireResult<Arc<Vec<FieldInfo>>> {
    match prepared_fields.and_then(|f| f.get(schema, format)) {
        Some(fields) => Ok(fields),
        None => Ok(Arc::new(pg_fields(schema, format)?)),
    }
}

/// The overall format code of CopyInResponse/CopyOutResponse: 0 for text and CSV, 1 for binary.
fn wire_format(format: CopyFormat) -> i8 {
    match format {
        CopyFormat::Binary => 1,
        CopyFormat::Text | CopyFormat::Csv => 0,
    }
}

/// When the statement about to run must end, by the session's `statement_timeout`.
fn statement_deadline(session: &Session) -> Option<tokio::time::Instant> {
    session
        .settings()
        .statement_timeout()
        .map(|timeout| tokio::time::Instant::now() + timeout)
}

/// Runs a statement's execution until `deadline`. Only a read-only statement is abandoned
/// there (57014): a write or DDL runs to its end, so that a timeout never leaves it half-done;
/// the rows a query streams afterwards stop at the same deadline.
async fn within_deadline<T>(
    deadline: Option<tokio::time::Instant>,
    read_only: bool,
    work: impl std::future::Future<Output = Result<T, SqlError>>,
) -> Result<T, SqlError> {
    match deadline {
        Some(deadline) if read_only => tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(SqlError::StatementTimeout)),
        _ => work.await,
    }
}

fn cancel_receiver<C: ClientInfo>(client: &C) -> PgWireResult<tokio::sync::watch::Receiver<u64>> {
    client
        .session_extensions()
        .get::<Arc<CancelSignal>>()
        .map(|signal| signal.subscribe())
        .ok_or_else(|| {
            error_response(
                "ERROR",
                "08P01",
                "no cancel signal: the startup did not complete".into(),
            )
        })
}

fn command_tag(tag: &CommandTag) -> Tag {
    let mut result = Tag::new(&tag.command);
    if let Some(oid) = tag.oid {
        result = result.with_oid(oid);
    }
    if let Some(rows) = tag.rows {
        result = result.with_rows(rows as usize);
    }
    result
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = quiver_sql::parse(query).map_err(|e| to_pgwire(SqlError::from(e)))?;
        let session = session_of(client)?;
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            if let quiver_sql::Statement::Sql(sql) = &statement
                && let ast::Statement::Deallocate { name, .. } = sql.as_ref()
            {
                match deallocate(client, name) {
                    Ok(response) => responses.push(response),
                    Err(PgWireError::UserError(info)) => {
                        responses.push(Response::Error(info));
                        break;
                    }
                    Err(other) => return Err(other),
                }
                continue;
            }
            let run = async {
                let mut session = session.lock().await;
                let deadline = statement_deadline(&session);
                let read_only = quiver_sql::is_read_only(&statement);
                within_deadline(deadline, read_only, session.run(statement.clone()))
                    .await
                    .map(|output| (output, deadline))
            };
            let response = match with_notices(client, run).await? {
                Ok((output, deadline)) => {
                    sync_cursor_portals(client, &session, &statement).await?;
                    self.respond(client, output, &Format::UnifiedText, None, deadline)
                }
                Err(error) => Err(to_pgwire(error)),
            };
            match response {
                Ok(response) => {
                    let is_copy_in = matches!(response, Response::CopyIn(_));
                    responses.push(response);
                    if is_copy_in {
                        // The COPY data follows; statements after it in the same string are not run,
                        // as in PostgreSQL.
                        break;
                    }
                }
                // The first failing statement ends the query string, as in PostgreSQL.
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = PreparedStatement;
    type QueryParser = QuiverQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// Describe as pgwire does it, except that a statement returning no rows (an INSERT with
    /// parameters) is described with NoData, as PostgreSQL does, not an empty RowDescription:
    /// pgjdbc takes the latter for a query and then reports no update counts for a batch.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        if message.target_type == b'S'
            && let Some(Entry::Value(statement)) = client.portal_store().get_statement(name)
            && statement.statement.result_fields.is_none()
        {
            let described = self.do_describe_statement(client, &statement).await?;
            client
                .send(PgWireBackendMessage::ParameterDescription(
                    ParameterDescription::new(
                        described.parameters.iter().map(|t| t.oid()).collect(),
                    ),
                ))
                .await?;
            client
                .send(PgWireBackendMessage::NoData(NoData::new()))
                .await?;
            return Ok(());
        }
        self._on_describe(client, message).await
    }

    /// Parse as pgwire does it, noting the statement's name for `DEALLOCATE ALL`.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if name != DEFAULT_NAME
            && let Some(names) = client.session_extensions().get::<PreparedNames>()
        {
            names.lock().insert(name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// The client's Flush: everything answered so far goes out now, not at the next
    /// ReadyForQuery (see `connection`).
    async fn on_flush<C>(&self, client: &mut C, _message: Flush) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(request) = client.session_extensions().get::<Arc<FlushRequest>>() {
            request.request();
        }
        client.flush().await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PreparedStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        // A NULL whose type neither the client nor the plan gives (`$1::varchar` leaves
        // DataFusion without one) is a text NULL, as PostgreSQL resolves `unknown`: arrow-pg's
        // decoder for a type it cannot name drops a NULL rather than keeping its place.
        let inferred: Vec<Option<&DataType>> = statement
            .parameter_types
            .iter()
            .enumerate()
            .map(|(i, t)| match (t, portal.parameters.get(i)) {
                (None, Some(None)) => Some(&DataType::Utf8),
                (t, _) => t.as_ref(),
            })
            .collect();
        let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &inferred)?;
        let session = session_of(client)?;
        let execute = async {
            let mut session = session.lock().await;
            let deadline = statement_deadline(&session);
            let read_only = statement.prepared.is_read_only();
            within_deadline(
                deadline,
                read_only,
                session.execute(&statement.prepared, Some(params)),
            )
            .await
            .map(|output| (output, deadline))
        };
        let (output, deadline) = with_notices(client, execute).await?.map_err(to_pgwire)?;
        sync_cursor_portals(client, &session, statement.prepared.statement()).await?;
        self.respond(
            client,
            output,
            &portal.result_column_format,
            statement.result_fields.as_ref(),
            deadline,
        )
    }
}

#[async_trait]
impl CopyHandler for QueryHandler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pending = client
            .session_extensions()
            .get_or_insert_with(PendingCopy::default);
        match pending.lock().as_mut() {
            Some(copy) => {
                copy.receive(&copy_data.data);
                Ok(())
            }
            None => Err(error_response(
                "ERROR",
                "08P01",
                "CopyData received outside of a COPY".into(),
            )),
        }
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pending = client
            .session_extensions()
            .get_or_insert_with(PendingCopy::default);
        let copy = pending.lock().take();
        let Some(copy) = copy else {
            return Err(error_response(
                "ERROR",
                "08P01",
                "CopyDone received outside of a COPY".into(),
            ));
        };
        let session = session_of(client)?;
        let tag = session
            .lock()
            .await
            .finish_copy(*copy)
            .await
            .map_err(to_pgwire)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                command_tag(&tag).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Dropping the pending COPY discards everything received: nothing was written.
        let pending = client
            .session_extensions()
            .get_or_insert_with(PendingCopy::default);
        pending.lock().take();
        if let Ok(session) = session_of(client) {
            session.lock().await.note_failure();
        }
        error_response(
            "ERROR",
            "57014",
            format!("COPY from stdin failed: {}", fail.message),
        )
    }
}
