//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it, against the
//! verifiers the catalog stores.
//!
//! pgwire has a SCRAM implementation, but its `AuthSource` must hand over the salted password,
//! which is a password equivalent (whoever holds it can log in), and it compares proofs with `==`.
//! Quiver stores PostgreSQL's verifiers (StoredKey and ServerKey, from which no proof can be
//! computed) and compares in constant time, so the exchange is done here over pgwire's messages.

use std::borrow::Cow;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use quiver_catalog::ScramVerifier;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;

/// The one SASL mechanism offered: no channel binding (`-PLUS`), as PostgreSQL without TLS.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Iterations of mock verifiers: PostgreSQL's `scram_iterations` default, which new verifiers
/// get too.
const ITERATIONS: u32 = 4096;

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message is not what SCRAM allows here (08P01).
    Malformed(&'static str),
    /// The proof does not match: a wrong password, an unknown user or one without a password.
    WrongPassword,
    /// The system's random number generator failed: no nonce can be made.
    NoRandomness,
}

/// What the server knows after the client's first message and the server's answer.
pub struct AwaitingProof {
    verifier: ScramVerifier,
    /// False for a user that cannot log in: the exchange runs to the end so that its answers do
    /// not tell whether the user exists, but it always fails.
    verifiable: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Reads the client-first message and answers with the server-first one. `verifier` is `None`
/// for a user that does not exist or has no password; `mock_salt_key` then salts a mock verifier
/// so that the same user name always gets the same salt, as a real one would.
pub fn begin(
    client_first: &[u8],
    verifier: Option<&ScramVerifier>,
    user: &str,
    mock_salt_key: &hmac::Key,
) -> Result<(String, AwaitingProof), ScramError> {
    let text = std::str::from_utf8(client_first)
        .map_err(|_| ScramError::Malformed("client-first-message is not UTF-8"))?;
    let (gs2_header, client_first_bare) = split_gs2_header(text)?;
    let mut client_nonce = None;
    for (index, attribute) in client_first_bare.split(',').enumerate() {
        match (index, attribute.split_once('=')) {
            (0, Some(("m", _))) => {
                return Err(ScramError::Malformed("SCRAM extensions are not supported"));
            }
            // PostgreSQL ignores the SCRAM user name: the startup packet's user is the one.
            (0, Some(("n", _))) => {}
            (1, Some(("r", nonce))) if is_printable(nonce) => client_nonce = Some(nonce),
            (0 | 1, _) => return Err(ScramError::Malformed("malformed client-first-message")),
            _ => {}
        }
    }
    let client_nonce =
        client_nonce.ok_or(ScramError::Malformed("client-first-message has no nonce"))?;
    let (verifier, verifiable) = match verifier {
        Some(verifier) => (verifier.clone(), true),
        None => (mock_verifier(user, mock_salt_key), false),
    };
    let nonce = format!("{client_nonce}{}", BASE64.encode(random_bytes::<18>()?));
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        server_first.clone(),
        AwaitingProof {
            verifier,
            verifiable,
            gs2_header: gs2_header.to_string(),
            client_first_bare: client_first_bare.to_string(),
            server_first,
            nonce,
        },
    ))
}

impl AwaitingProof {
    /// Checks the client-final message's proof; on success, the server-final message that
    /// proves to the client that the server holds the verifier.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final-message has no proof"))?;
        let mut attributes = without_proof.split(',');
        let channel_binding =
            attributes
                .next()
                .and_then(|a| a.strip_prefix("c="))
                .ok_or(ScramError::Malformed(
                    "client-final-message has no channel binding",
                ))?;
        if BASE64.decode(channel_binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "channel binding does not match the client-first-message",
            ));
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final-message has no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != digest::SHA256_OUTPUT_LEN {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.stored_key),
            auth_message.as_bytes(),
        );
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let matches: bool = stored_key.as_ref().ct_eq(&self.verifier.stored_key).into();
        if !(matches && self.verifiable) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.server_key),
            auth_message.as_bytes(),
        );
        Ok(format!("v={}", BASE64.encode(server_signature.as_ref())))
    }
}

/// Whether `password` is the one `verifier` was made from.
pub fn verifier_matches(verifier: &ScramVerifier, password: &str) -> bool {
    let derived = derive_verifier(password, verifier.salt.clone(), verifier.iterations);
    derived.stored_key.ct_eq(&verifier.stored_key).into()
}

/// A key that salts mock verifiers; random for each server process.
pub fn mock_salt_key() -> Result<hmac::Key, ScramError> {
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &random_bytes::<32>()?))
}

fn derive_verifier(password: &str, salt: Vec<u8>, iterations: u32) -> ScramVerifier {
    // As PostgreSQL: a password SASLprep cannot normalise is used as it is.
    let normalized = stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password));
    let mut salted = [0u8; digest::SHA256_OUTPUT_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN),
        &salt,
        normalized.as_bytes(),
        &mut salted,
    );
    let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&salted_key, b"Client Key");
    let server_key = hmac::sign(&salted_key, b"Server Key");
    ScramVerifier {
        iterations,
        salt,
        stored_key: digest::digest(&digest::SHA256, client_key.as_ref())
            .as_ref()
            .to_vec(),
        server_key: server_key.as_ref().to_vec(),
    }
}

fn mock_verifier(user: &str, mock_salt_key: &hmac::Key) -> ScramVerifier {
    let salt = hmac::sign(mock_salt_key, user.as_bytes());
    ScramVerifier {
        iterations: ITERATIONS,
        salt: salt.as_ref()[..16].to_vec(),
        stored_key: vec![0; digest::SHA256_OUTPUT_LEN],
        server_key: vec![0; digest::SHA256_OUTPUT_LEN],
    }
}

/// Splits `gs2-header client-first-bare`; the header is `n,,` or `y,,` (the client would bind
/// the channel but the server did not offer it). `p=` asks for a binding that was not offered,
/// and an authorization identity other than the user is not supported, as in PostgreSQL.
fn split_gs2_header(text: &str) -> Result<(&str, &str), ScramError> {
    let header_end = text
        .match_indices(',')
        .nth(1)
        .map(|(index, _)| index + 1)
        .ok_or(ScramError::Malformed("malformed client-first-message"))?;
    let (header, bare) = text.split_at(header_end);
    match header {
        "n,," | "y,," => Ok((header, bare)),
        _ if header.starts_with("p=") => Err(ScramError::Malformed(
            "channel binding was not offered (SCRAM-SHA-256-PLUS)",
        )),
        _ if header.starts_with("n,a=") || header.starts_with("y,a=") => Err(
            ScramError::Malformed("authorization identities are not supported"),
        ),
        _ => Err(ScramError::Malformed("malformed GS2 header")),
    }
}

fn is_printable(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ScramError::NoRandomness)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn verifier_for(password: &str) -> ScramVerifier {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
        .unwrap()
    }

    fn exchange(password_stored: &str, password_sent: &str) -> Result<(), ScramError> {
        let verifier = verifier_for(password_stored);
        let mut client = ScramSha256::new(password_sent.as_bytes(), ChannelBinding::unsupported());
        let (server_first, awaiting) = begin(
            client.message(),
            Some(&verifier),
            "alice",
            &mock_salt_key()?,
        )?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = awaiting.finish(client.message())?;
        client.finish(server_final.as_bytes()).unwrap();
        Ok(())
    }

    #[test]
    fn the_right_password_passes_and_the_server_proves_itself() {
        exchange("s3cret", "s3cret").unwrap();
        exchange("pässwörd ünïcode", "pässwörd ünïcode").unwrap();
    }

    #[test]
    fn a_wrong_password_fails() {
        assert_eq!(exchange("s3cret", "S3cret"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn a_user_without_a_verifier_gets_a_stable_mock_salt_and_always_fails() {
        let key = mock_salt_key().unwrap();
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let (first, awaiting) = begin(client.message(), None, "ghost", &key).unwrap();
        let (again, _) = begin(b"n,,n=,r=abc", None, "ghost", &key).unwrap();
        let salt = |m: &str| m.split(',').nth(1).unwrap().to_string();
        assert_eq!(salt(&first), salt(&again));
        client.update(first.as_bytes()).unwrap();
        assert_eq!(
            awaiting.finish(client.message()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn verifiers_match_only_their_password() {
        let verifier = verifier_for("hunter2");
        assert!(verifier_matches(&verifier, "hunter2"));
        assert!(!verifier_matches(&verifier, "hunter3"));
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let key = mock_salt_key().unwrap();
        for message in [
            &b"p=tls-server-end-point,,n=,r=abc"[..],
            b"n,a=bob,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"garbage",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(
                    begin(message, None, "u", &key),
                    Err(ScramError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        let (_, awaiting) = begin(b"n,,n=,r=abc", None, "u", &key).unwrap();
        for message in [
            &b"c=biws,r=wrong,p=AAAA"[..],
            b"c=eSws,r=abc,p=AAAA",
            b"c=biws,r=abc",
        ] {
            assert!(matches!(
                awaiting.finish(message),
                Err(ScramError::Malformed(_))
            ));
        }
    }
}
