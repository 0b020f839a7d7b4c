//! Connection startup: where a connection may come from, who it is (trust on loopback, or
//! SCRAM-SHA-256 against the catalog's verifiers), which project it opens, and the session's
//! parameters.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use quiver_catalog::CatalogState;
use quiver_sql::audit::AuditEvent;
use quiver_sql::{Engine, SqlError};

use crate::cancel::Cancellation;
use crate::errors::{error_response, sqlstate, to_pgwire};
use crate::handler::attach_session;
use crate::scram::{self, AwaitingProof, ScramError};

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password is configured: loopback connections are trusted, others refused.
    TrustLoopback,
    /// SCRAM-SHA-256 for everyone, from any address.
    Scram,
}

/// What a connection must satisfy before its session opens.
#[derive(Debug, Clone, Copy)]
pub struct AccessPolicy {
    pub authentication: AuthMethod,
    /// Refuse connections that did not negotiate TLS.
    pub tls_required: bool,
    /// Sessions open at once, all users together (`--max-connections`).
    pub max_connections: usize,
}

/// The open sessions, in all and per user, against `max_connections` and each user's
/// `CONNECTION LIMIT`.
#[derive(Default)]
struct OpenSessions {
    counts: std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>,
}

/// One counted session; dropping it (when the connection ends) uncounts it.
struct CountedSession {
    sessions: Arc<OpenSessions>,
    user: String,
}

impl OpenSessions {
    /// Counts a new session of `user`, or says which limit it would exceed (53300).
    fn admit(
        self: &Arc<Self>,
        user: &str,
        user_limit: Option<u32>,
        max_connections: usize,
    ) -> Result<CountedSession, String> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_user) = &mut *counts;
        if *total >= max_connections {
            return Err("sorry, too many clients already".into());
        }
        let of_user = per_user.entry(user.to_string()).or_default();
        if user_limit.is_some_and(|limit| *of_user >= limit as usize) {
            return Err(format!("too many connections for role \"{user}\""));
        }
        *of_user += 1;
        *total += 1;
        Ok(CountedSession {
            sessions: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for CountedSession {
    fn drop(&mut self) {
        let mut counts = self
            .sessions
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, per_user) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(count) = per_user.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

/// Where a connection's SCRAM exchange stands, kept in the connection's extensions.
#[derive(Default)]
struct ScramExchange(std::sync::Mutex<Option<AwaitingProof>>);

/// Opens a session for each connection.
pub struct Startup {
    engine: Arc<Engine>,
    connections: Arc<ConnectionManager>,
    cancellation: Arc<Cancellation>,
    policy: AccessPolicy,
    open_sessions: Arc<OpenSessions>,
    /// Salts the mock verifiers of users that cannot log in, so that their exchange looks like
    /// anyone else's.
    mock_salt_key: ring::hmac::Key,
}

impl Startup {
    pub fn new(
        engine: Arc<Engine>,
        connections: Arc<ConnectionManager>,
        cancellation: Arc<Cancellation>,
        policy: AccessPolicy,
    ) -> Result<Startup, String> {
        let mock_salt_key = scram::mock_salt_key()
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(Startup {
            engine,
            connections,
            cancellation,
            policy,
            open_sessions: Arc::default(),
            mock_salt_key,
        })
    }

    /// The startup packet: checks the transport and address, then trusts the user or starts
    /// the SCRAM exchange.
    async fn on_startup_packet<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let address = client.socket_addr().ip();
        if self.policy.tls_required && !client.is_secure() {
            return Err(fatal(
                "28000",
                format!(
                    "connection from {address} refused: the server requires TLS (sslmode=require or stronger)"
                ),
            ));
        }
        let user = startup_user(client)?;
        match self.policy.authentication {
            AuthMethod::TrustLoopback => {
                if !address.is_loopback() {
                    return Err(fatal(
                        "28000",
                        format!(
                            "connection from {address} refused: with no password configured, only loopback connections are trusted"
                        ),
                    ));
                }
                if self.login_catalog(&user).await.user(&user).is_none() {
                    return Err(fatal("28000", format!("role \"{user}\" does not exist")));
                }
                self.open_session(client, &user).await
            }
            AuthMethod::Scram => {
                client.session_extensions().insert(ScramExchange::default());
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![scram::MECHANISM.to_string()],
                    )))
                    .await?;
                Ok(())
            }
        }
    }

    /// A SASLInitialResponse or SASLResponse of the SCRAM exchange.
    async fn on_sasl_message<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::startup::PasswordMessageFamily,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(exchange) = client.session_extensions().get::<ScramExchange>() else {
            return Err(fatal(
                "08P01",
                "unexpected password message: no authentication was requested".into(),
            ));
        };
        let user = startup_user(client)?;
        let awaiting = exchange
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match awaiting {
            None => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != scram::MECHANISM {
                    return Err(fatal(
                        "08P01",
                        format!(
                            "client selected an invalid SASL authentication mechanism \"{}\"",
                            initial.auth_method
                        ),
                    ));
                }
                let client_first = initial.data.unwrap_or_default();
                let catalog = self.login_catalog(&user).await;
                let verifier = catalog.user(&user).and_then(|u| u.password.as_ref());
                let (server_first, awaiting) =
                    scram::begin(&client_first, verifier, &user, &self.mock_salt_key)
                        .map_err(|e| self.failed(client, &user, e))?;
                *exchange
                    .0
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(awaiting);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(server_first.into()),
                    ))
                    .await?;
                Ok(())
            }
            Some(awaiting) => {
                let response = message.into_sasl_response()?;
                let server_final = awaiting
                    .finish(&response.data)
                    .map_err(|e| self.failed(client, &user, e))?;
                client
                    .feed(PgWireBackendMessage::Authentication(
                        Authentication::SASLFinal(server_final.into()),
                    ))
                    .await?;
                self.open_session(client, &user).await
            }
        }
    }

    /// The catalog a login of `user` is checked against: this node's, unless it does not know
    /// the user, in which case (on a cluster member) it first applies every change committed
    /// before the login, so a user created on one node can log in on another at once.
    async fn login_catalog(&self, user: &str) -> Arc<CatalogState> {
        let catalog = self.engine.catalog.snapshot();
        if catalog.user(user).is_some() || !self.caught_up_with_cluster().await {
            return catalog;
        }
        self.engine.catalog.snapshot()
    }

    /// On a cluster member, applies every catalog change committed before this call and says
    /// whether it did. A login a node would refuse is checked again after this; one it would
    /// accept is not waited for, because every statement of the session catches up and checks
    /// its privileges again (so a dropped user or a revoked role takes effect at the first
    /// statement, as on a PostgreSQL standby that has replayed the change).
    async fn caught_up_with_cluster(&self) -> bool {
        if self.engine.catalog.node().is_none() {
            return false;
        }
        match self.engine.catalog.linearizable_snapshot().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "a login could not catch up with the cluster");
                false
            }
        }
    }

    /// The error a failed exchange ends the connection with; the failure is audited.
    fn failed<C: ClientInfo>(&self, client: &C, user: &str, error: ScramError) -> PgWireError {
        let (code, message) = match error {
            ScramError::Malformed(what) => ("08P01", format!("malformed SCRAM message: {what}")),
            ScramError::WrongPassword => (
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
            ScramError::NoRandomness => (
                "XX000",
                "the system random number generator failed".to_string(),
            ),
        };
        self.audit_failed_login(client, user, &message);
        fatal(code, message)
    }

    /// Records a login that failed, in the server log and the audit log.
    fn audit_failed_login<C: ClientInfo>(&self, client: &C, user: &str, reason: &str) {
        let project = requested_project(client, user);
        let address = client.socket_addr();
        tracing::info!(user, project, %address, reason, "login failed");
        self.engine.audit.record(&AuditEvent {
            time: chrono::Utc::now(),
            user: user.to_string(),
            project,
            kind: "LOGIN".into(),
            object: format!("from {}", address.ip()),
            success: false,
            error: Some(reason.to_string()),
        });
    }

    /// The user is who they say: open the project's session and report its parameters.
    async fn open_session<C>(&self, client: &mut C, user: &str) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let database = requested_project(client, user);
        let user_limit = self
            .engine
            .catalog
            .snapshot()
            .user(user)
            .and_then(|u| u.connection_limit);
        let counted = self
            .open_sessions
            .admit(user, user_limit, self.policy.max_connections)
            .map_err(|message| fatal("53300", message))?;
        client.session_extensions().insert(counted);
        let application_name = client.metadata().get("application_name").cloned();
        let mut opened = self.engine.session(&database, user);
        if matches!(
            opened,
            Err(SqlError::UndefinedProject(_) | SqlError::InsufficientPrivilege(_))
        ) && self.caught_up_with_cluster().await
        {
            opened = self.engine.session(&database, user);
        }
        let mut session = match opened {
            Ok(session) => session,
            Err(e) => {
                if matches!(e, SqlError::InsufficientPrivilege(_)) {
                    self.audit_failed_login(client, user, &e.to_string());
                }
                return Err(error_response("FATAL", sqlstate(&e), e.to_string()));
            }
        };
        if let Some(name) = application_name {
            session
                .set_startup_parameter("application_name", &name)
                .map_err(to_pgwire)?;
        }
        let (pid, secret_key) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret_key.clone());
        let (handle, guard) = self.connections.register(pid, secret_key.clone());
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        let (signal, signal_guard) = self.cancellation.register(pid, &secret_key);
        client.session_extensions().insert(signal);
        client.session_extensions().insert(signal_guard);

        client
            .feed(PgWireBackendMessage::Authentication(Authentication::Ok))
            .await?;
        for (name, value) in session.settings().startup_parameters() {
            client
                .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                    name, value,
                )))
                .await?;
        }
        client
            .feed(PgWireBackendMessage::BackendKeyData(BackendKeyData::new(
                pid, secret_key,
            )))
            .await?;
        attach_session(client, session);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                TransactionStatus::Idle,
            )))
            .await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                self.on_startup_packet(client).await
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.on_sasl_message(client, message).await
            }
            _ => Ok(()),
        }
    }
}

/// The project a connection asks for: its `database`, by default the user's name (as in
/// PostgreSQL).
fn requested_project<C: ClientInfo>(client: &C, user: &str) -> String {
    client
        .metadata()
        .get("database")
        .cloned()
        .unwrap_or_else(|| user.to_string())
}

fn startup_user<C: ClientInfo>(client: &C) -> PgWireResult<String> {
    client.metadata().get("user").cloned().ok_or_else(|| {
        fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )
    })
}

fn fatal(code: &str, message: String) -> PgWireError {
    error_response("FATAL", code, message)
}
