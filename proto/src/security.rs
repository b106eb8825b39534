//! How the wire between workers and coordinator is secured: TLS (rustls through tonic) with an
//! optional client CA for mutual TLS, and an optional bearer token shared through a file.
//!
//! | side | TLS | token |
//! |---|---|---|
//! | coordinator | `[coordinator.tls]` `cert`, `key`, optional `client_ca` (mutual TLS: only workers with a certificate it signed connect) | `[auth] token_file`: every call must carry `authorization: Bearer <token>` |
//! | worker | `[worker.tls]` `ca` (trusts the coordinator's certificate), optional `cert` and `key` (its client certificate), optional `domain` | the same `[auth] token_file` |
//!
//! Plaintext is allowed only when asked for explicitly (`insecure`) on a loopback address: a
//! coordinator that listens anywhere else without TLS refuses to start. The token never
//! appears in logs or `Debug` output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// Security set-up errors: each names the file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A credential file cannot be read.
    #[error("{what} {path}: {source}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token file is empty.
    #[error("[auth] token_file {0} is empty")]
    EmptyToken(PathBuf),
    /// Plaintext where it is not allowed.
    #[error(
        "the coordinator would listen on {0} without TLS: set [coordinator.tls] cert and key (and client_ca for mutual TLS), or listen on a loopback address with --insecure"
    )]
    PlaintextRefused(SocketAddr),
    /// Plaintext on loopback without being asked for.
    #[error(
        "the coordinator has no TLS configured: set [coordinator.tls] cert and key, or pass --insecure to serve plaintext on the loopback address {0}"
    )]
    PlaintextNotRequested(SocketAddr),
    /// The worker's URL and TLS settings disagree.
    #[error("coordinator URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// tonic refused the TLS settings.
    #[error("TLS settings: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bearer token (redacted in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Token, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::File {
            what: "[auth] token_file",
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(SecurityError::EmptyToken(path.to_path_buf()));
        }
        Ok(Token(token.to_string()))
    }

    /// Whether `header` is `Bearer <this token>`, compared in constant time.
    fn accepts(&self, header: &[u8]) -> bool {
        let Some(given) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        let want = self.0.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The coordinator's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA whose client certificates are required (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// How the coordinator secures its port.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS, or `None` for plaintext.
    pub tls: Option<ServerTls>,
    /// Required bearer token.
    pub token: Option<Token>,
    /// Plaintext explicitly asked for (allowed on loopback only).
    pub insecure: bool,
}

impl ServerSecurity {
    /// Plaintext for a coordinator that only its own process talks to (`capfilt run`, tests).
    pub fn loopback_plaintext() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// Refuses plaintext except when asked for on a loopback address.
    pub fn check(&self, listen: SocketAddr) -> Result<(), SecurityError> {
        match (&self.tls, self.insecure, listen.ip().is_loopback()) {
            (Some(_), _, _) => Ok(()),
            (None, true, true) => Ok(()),
            (None, _, false) => Err(SecurityError::PlaintextRefused(listen)),
            (None, false, true) => Err(SecurityError::PlaintextNotRequested(listen)),
        }
    }

    /// tonic's TLS settings, when TLS is configured.
    pub fn tls_config(&self) -> Result<Option<ServerTlsConfig>, SecurityError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let identity = Identity::from_pem(
            read("[coordinator.tls] cert", &tls.cert)?,
            read("[coordinator.tls] key", &tls.key)?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(
                "[coordinator.tls] client_ca",
                ca,
            )?));
        }
        Ok(Some(config))
    }

    /// The check every call passes: the bearer token, when one is configured.
    pub fn interceptor(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let token = self.token.clone();
        move |req: Request<()>| {
            let Some(token) = &token else {
                return Ok(req);
            };
            match req.metadata().get("authorization") {
                Some(v) if token.accepts(v.as_bytes()) => Ok(req),
                Some(_) => Err(Status::unauthenticated(
                    "wrong bearer token: give the worker the coordinator's [auth] token_file",
                )),
                None => Err(Status::unauthenticated(
                    "no bearer token: this coordinator requires one; set [auth] token_file on the worker",
                )),
            }
        }
    }

    /// A one-line description for the start-up log (no secrets).
    pub fn describe(&self) -> &'static str {
        match (&self.tls, &self.token) {
            (Some(t), Some(_)) if t.client_ca.is_some() => "mutual TLS and bearer token",
            (Some(t), None) if t.client_ca.is_some() => "mutual TLS",
            (Some(_), Some(_)) => "TLS and bearer token",
            (Some(_), None) => "TLS",
            (None, Some(_)) => "plaintext (loopback) with bearer token",
            (None, None) => "plaintext (loopback)",
        }
    }
}

/// The worker's TLS files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    pub key: Option<PathBuf>,
    /// Name to expect in the coordinator's certificate [default: the URL's host].
    pub domain: Option<String>,
}

/// How a worker reaches its coordinator.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// TLS settings (used with an `https://` URL).
    pub tls: Option<ClientTls>,
    /// Bearer token sent with every call.
    pub token: Option<Token>,
}

impl ClientSecurity {
    /// An endpoint for `url` with these settings: `https://` needs `[worker.tls] ca`, and TLS
    /// settings need an `https://` URL.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, SecurityError> {
        let bad = |message: &str| SecurityError::Url {
            url: url.to_string(),
            message: message.to_string(),
        };
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e.to_string()))?;
        let https = url.starts_with("https://");
        let loopback = endpoint.uri().host().is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if self.token.is_some() && !https && !loopback {
            return Err(bad(
                "the bearer token would cross the network in plaintext: use https:// with [worker.tls]",
            ));
        }
        match (&self.tls, https) {
            (None, false) => Ok(endpoint),
            (Some(_), false) => Err(bad(
                "[worker.tls] is set: use an https:// URL for the coordinator",
            )),
            (None, true) => Err(bad(
                "https:// needs [worker.tls] ca (the CA that signed the coordinator's certificate)",
            )),
            (Some(tls), true) => {
                let ca = tls.ca.as_ref().ok_or_else(|| {
                    bad("https:// needs [worker.tls] ca (the CA that signed the coordinator's certificate)")
                })?;
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read("[worker.tls] ca", ca)?));
                match (&tls.cert, &tls.key) {
                    (Some(cert), Some(key)) => {
                        config = config.identity(Identity::from_pem(
                            read("[worker.tls] cert", cert)?,
                            read("[worker.tls] key", key)?,
                        ));
                    }
                    (None, None) => {}
                    _ => return Err(bad("[worker.tls] cert and key go together")),
                }
                if let Some(d) = &tls.domain {
                    config = config.domain_name(d.clone());
                }
                Ok(endpoint.tls_config(config)?)
            }
        }
    }

    /// Adds the bearer token to every call.
    pub fn interceptor(&self) -> ClientAuth {
        ClientAuth(
            self.token
                .as_ref()
                .and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.0)).ok()),
        )
    }
}

/// The worker's interceptor: adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct ClientAuth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientAuth(<redacted>)")
    }
}

impl tonic::service::Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_when_asked_for_on_loopback() {
        let lo: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let plain = ServerSecurity::default();
        assert!(matches!(
            plain.check(lo),
            Err(SecurityError::PlaintextNotRequested(_))
        ));
        assert!(matches!(
            plain.check(any),
            Err(SecurityError::PlaintextRefused(_))
        ));
        let asked = ServerSecurity::loopback_plaintext();
        assert!(asked.check(lo).is_ok());
        assert!(
            asked.check(any).is_err(),
            "--insecure does not open a public port"
        );
        let tls = ServerSecurity {
            tls: Some(ServerTls {
                cert: "c".into(),
                key: "k".into(),
                client_ca: None,
            }),
            ..ServerSecurity::default()
        };
        assert!(tls.check(any).is_ok());
    }

    #[test]
    fn the_token_is_compared_whole_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("capfilt-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-value\n").expect("write");
        let t = Token::from_file(&file).expect("token");
        assert!(t.accepts(b"Bearer s3cret-value"));
        assert!(!t.accepts(b"Bearer s3cret-valu"));
        assert!(!t.accepts(b"Bearer s3cret-valuE"));
        assert!(!t.accepts(b"s3cret-value"));
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::write(&file, " \n").expect("write");
        assert!(matches!(
            Token::from_file(&file),
            Err(SecurityError::EmptyToken(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_worker_url_must_match_its_tls_settings() {
        let plain = ClientSecurity::default();
        assert!(plain.endpoint("http://127.0.0.1:1").is_ok());
        let e = plain.endpoint("https://c:1").expect_err("no ca");
        assert!(e.to_string().contains("[worker.tls] ca"), "{e}");
        let tls = ClientSecurity {
            tls: Some(ClientTls::default()),
            token: None,
        };
        let e = tls.endpoint("http://c:1").expect_err("http with tls");
        assert!(e.to_string().contains("https://"), "{e}");
        let dir = std::env::temp_dir().join(format!("capfilt-token2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("t"), "x").expect("write");
        let token_only = ClientSecurity {
            tls: None,
            token: Some(Token::from_file(&dir.join("t")).expect("token")),
        };
        let e = token_only
            .endpoint("http://coordinator:1")
            .expect_err("plaintext token");
        assert!(e.to_string().contains("plaintext"), "{e}");
        assert!(
            token_only.endpoint("http://127.0.0.1:1").is_ok(),
            "loopback"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
