//! Reading the original's PostgreSQL database: connecting (plain, or TLS as libpq's
//! `sslmode=require` does it) and fetching its three tables in one consistent snapshot.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ImportError;
use crate::http_client::error_chain;

/// The migration version of the original's final schema, the only one imported.
pub const ORIGINAL_SCHEMA_VERSION: i32 = 11;
/// Debian's socket directory, where libpq looks when a URL names no host.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// A row of `"user"`.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub login_token: String,
    pub api_token: String,
    /// jsonb as text.
    pub proxy_config: Option<String>,
}

/// A row of `appservice`.
#[derive(Debug, Clone)]
pub struct BridgeRow {
    /// As PostgreSQL prints a UUID: lowercase, hyphenated.
    pub id: String,
    pub owner: String,
    pub prefix: String,
    pub bot: String,
    pub address: String,
    pub hs_token: String,
    pub as_token: String,
    /// NULL means websocket, like false.
    pub push: Option<bool>,
    pub config_password_hash: Option<Vec<u8>>,
    pub config_password_expiry: Option<i64>,
    /// jsonb as text.
    pub push_key: Option<String>,
}

/// A row of `room`.
#[derive(Debug, Clone)]
pub struct RoomRow {
    pub id: String,
    pub owner: String,
    pub deleted: bool,
}

/// Everything the importer reads.
#[derive(Debug, Default)]
pub struct Original {
    pub users: Vec<UserRow>,
    pub bridges: Vec<BridgeRow>,
    pub rooms: Vec<RoomRow>,
}

/// Connects to `url` (a `postgres://` URL or libpq's `key=value` form) and reads the
/// original's tables.
pub async fn read(url: &str) -> Result<Original, ImportError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| ImportError::Connect(format!("cannot parse the database URL: {e}")))?;
    if config.get_hosts().is_empty() {
        config.host_path(DEFAULT_SOCKET_DIR);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let (mut client, connection) = connect(&config).await?;
    let result = read_tables(&mut client).await;
    drop(client);
    let _ = connection.await;
    result
}

/// Connects as `config` says, running the connection on its own task. TLS (when the URL
/// asks for it) only over TCP: PostgreSQL never encrypts a Unix socket, and a socket has
/// no server name to give the handshake.
async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), ImportError> {
    let failed = |e: tokio_postgres::Error| ImportError::Connect(error_chain(&e));
    if config
        .get_hosts()
        .iter()
        .all(|h| !matches!(h, Host::Tcp(_)))
    {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(failed)?;
        return Ok((client, tokio::spawn(async { drop(connection.await) })));
    }
    let tls = MakeRustlsConnect::new(AnyCertificate::config().map_err(ImportError::Connect)?);
    let (client, connection) = config.connect(tls).await.map_err(failed)?;
    Ok((client, tokio::spawn(async { drop(connection.await) })))
}

async fn read_tables(client: &mut tokio_postgres::Client) -> Result<Original, ImportError> {
    let query = |e: tokio_postgres::Error| ImportError::Query(error_chain(&e));
    // One snapshot for all three tables: a running original cannot make them disagree.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(query)?;
    let version_table = tx
        .query_one("SELECT to_regclass('public.version') IS NOT NULL", &[])
        .await
        .map_err(query)?;
    if !col::<bool>(&version_table, 0)? {
        return Err(ImportError::NotOriginal);
    }
    let versions: Vec<i32> = tx
        .query("SELECT version FROM version", &[])
        .await
        .map_err(query)?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
    match versions.as_slice() {
        [ORIGINAL_SCHEMA_VERSION] => {}
        [found] => return Err(ImportError::SchemaVersion(*found)),
        _ => return Err(ImportError::NotOriginal),
    }
    let users = tx
        .query(
            r#"SELECT id, login_token, api_token, proxy_config::text FROM "user" ORDER BY id"#,
            &[],
        )
        .await
        .map_err(query)?
        .iter()
        .map(|r| -> Result<_, ImportError> {
            Ok(UserRow {
                id: col(r, 0)?,
                login_token: col(r, 1)?,
                api_token: col(r, 2)?,
                proxy_config: col(r, 3)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let bridges = tx
        .query(
            "SELECT id::text, owner, prefix, bot, address, hs_token, as_token, push, \
             config_password_hash, config_password_expiry, push_key::text \
             FROM appservice ORDER BY owner, prefix",
            &[],
        )
        .await
        .map_err(query)?
        .iter()
        .map(|r| -> Result<_, ImportError> {
            Ok(BridgeRow {
                id: col(r, 0)?,
                owner: col(r, 1)?,
                prefix: col(r, 2)?,
                bot: col(r, 3)?,
                address: col(r, 4)?,
                hs_token: col(r, 5)?,
                as_token: col(r, 6)?,
                push: col(r, 7)?,
                config_password_hash: col(r, 8)?,
                config_password_expiry: col(r, 9)?,
                push_key: col(r, 10)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let rooms = tx
        .query("SELECT id, owner::text, deleted FROM room ORDER BY id", &[])
        .await
        .map_err(query)?
        .iter()
        .map(|r| -> Result<_, ImportError> {
            Ok(RoomRow {
                id: col(r, 0)?,
                owner: col(r, 1)?,
                deleted: col(r, 2)?,
            })
        })
        .collect::<Result<_, _>>()?;
    tx.commit().await.map_err(query)?;
    Ok(Original {
        users,
        bridges,
        rooms,
    })
}

/// Column `i` of `row`; a NULL or a type the schema does not have is an error, not a
/// panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, ImportError> {
    row.try_get(i).map_err(|e| {
        let name = row.columns().get(i).map(|c| c.name()).unwrap_or("?");
        ImportError::Query(format!("column {name}: {}", error_chain(&e)))
    })
}

/// TLS that encrypts without checking who answers: what libpq does for `sslmode=require`
/// (and `prefer`), the modes a database URL can ask tokio-postgres for.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    fn config() -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
