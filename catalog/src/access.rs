//! Who may do what: SCRAM password verifiers, project roles and the privileges they carry.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// A SCRAM-SHA-256 password verifier, as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. It lets the server check a
/// client's proof without knowing the password, and a stolen verifier is not enough to log in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// The length of a SHA-256 digest, and so of StoredKey and ServerKey.
const KEY_LEN: usize = 32;

impl ScramVerifier {
    const PREFIX: &'static str = "SCRAM-SHA-256$";

    /// Parses PostgreSQL's text form; `None` when the text is not a SCRAM-SHA-256 verifier.
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix(Self::PREFIX)?;
        let (parameters, keys) = rest.split_once('$')?;
        let (iterations, salt) = parameters.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let verifier = ScramVerifier {
            iterations: iterations.parse().ok().filter(|&n| n > 0)?,
            salt: BASE64.decode(salt).ok().filter(|s| !s.is_empty())?,
            stored_key: BASE64.decode(stored_key).ok()?,
            server_key: BASE64.decode(server_key).ok()?,
        };
        (verifier.stored_key.len() == KEY_LEN && verifier.server_key.len() == KEY_LEN)
            .then_some(verifier)
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}:{}${}:{}",
            Self::PREFIX,
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(&self.stored_key),
            BASE64.encode(&self.server_key)
        )
    }
}

/// Never prints the keys: a verifier in a log line is a verifier an attacker can replay offline.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ScramVerifier(SCRAM-SHA-256, {} iterations)",
            self.iterations
        )
    }
}

impl TryFrom<String> for ScramVerifier {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        ScramVerifier::parse(&text).ok_or_else(|| "not a SCRAM-SHA-256 verifier".to_string())
    }
}

impl From<ScramVerifier> for String {
    fn from(verifier: ScramVerifier) -> String {
        verifier.to_string()
    }
}

/// A member's role in a project (Hopsworks' project roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProjectRole {
    /// Reads everything in the project.
    Observer,
    /// Reads feature groups; creates feature views, training datasets and models.
    DataScientist,
    /// Creates, changes and writes feature groups, and manages the project's members.
    DataOwner,
}

impl ProjectRole {
    /// The role as SQL writes it: `DATA OWNER`, `DATA SCIENTIST`, `OBSERVER`.
    pub fn sql_name(self) -> &'static str {
        match self {
            ProjectRole::Observer => "OBSERVER",
            ProjectRole::DataScientist => "DATA SCIENTIST",
            ProjectRole::DataOwner => "DATA OWNER",
        }
    }

    /// Whether a member with this role may do `action`.
    pub fn allows(self, action: Privilege) -> bool {
        match action {
            Privilege::Read => true,
            Privilege::CreateArtifacts => self >= ProjectRole::DataScientist,
            Privilege::WriteData | Privilege::ManageMembers => self == ProjectRole::DataOwner,
        }
    }

    /// The least role that allows `action`.
    pub fn least_allowing(action: Privilege) -> ProjectRole {
        [
            ProjectRole::Observer,
            ProjectRole::DataScientist,
            ProjectRole::DataOwner,
        ]
        .into_iter()
        .find(|role| role.allows(action))
        .unwrap_or(ProjectRole::DataOwner)
    }
}

/// What a statement does inside a project, for the privilege check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// SELECT (offline and online), SHOW, DESCRIBE, serving functions.
    Read,
    /// Feature views, training datasets and models: created from the project's features.
    CreateArtifacts,
    /// Feature groups and tables: DDL, INSERT, COPY FROM, DELETE.
    WriteData,
    /// GRANT, REVOKE, SHARE and UNSHARE on the project.
    ManageMembers,
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Privilege::Read => "read",
            Privilege::CreateArtifacts => "create feature views, training datasets or models in",
            Privilege::WriteData => "create or write feature groups in",
            Privilege::ManageMembers => "manage the members and shares of",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_round_trips_through_postgres_text() {
        let text = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let verifier = ScramVerifier::parse(text).unwrap();
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt, b"saltsalt");
        assert_eq!(verifier.to_string(), text);
        assert!(!format!("{verifier:?}").contains("AAAA"));
    }

    #[test]
    fn malformed_verifiers_are_rejected() {
        for text in [
            "secret",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "md5abcdef",
        ] {
            assert!(ScramVerifier::parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn roles_are_ordered_by_what_they_allow() {
        use Privilege::*;
        assert!(ProjectRole::Observer.allows(Read));
        assert!(!ProjectRole::Observer.allows(CreateArtifacts));
        assert!(ProjectRole::DataScientist.allows(CreateArtifacts));
        assert!(!ProjectRole::DataScientist.allows(WriteData));
        assert!(ProjectRole::DataOwner.allows(ManageMembers));
        assert_eq!(
            ProjectRole::least_allowing(CreateArtifacts),
            ProjectRole::DataScientist
        );
    }
}
