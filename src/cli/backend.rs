//! Where the `bridge` commands do their work: on the data directory when the server is
//! stopped, or through the running server's management API when it holds the database.
//! Both return the same values, so the output does not depend on the path taken.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::Error;
use crate::http_client::{full_body, HttpClient};
use crate::operator::registration::BridgeRegistration;
use crate::secret::Secret;
use crate::service::bridge_requests::BridgeStatus;
use crate::service::delivery::Delivery;
use crate::service::homeserver::Homeserver;
use crate::service::management::{BridgeRef, BridgeSummary, Caller, Management, ProvisionRequest};
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;

/// The management API is local; anything slower than this is a hung server.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

// One per command run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Local(Management),
    Remote {
        client: HttpClient,
        base: String,
        secret: Secret,
    },
}

/// The `http://` URL of a listening address, the unspecified address made local.
pub fn local_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{ip}:{}", addr.port())
}

impl Backend {
    pub fn open(config: &Config) -> Result<Backend> {
        let client = HttpClient::new().context("cannot load TLS root certificates")?;
        match Store::open(&config.data_dir()) {
            Ok(store) => {
                let store = Arc::new(store);
                let homeserver = Arc::new(Homeserver::new(config, client.clone()));
                // Offline there are no connections and no workers; deletions only touch disk.
                let delivery = Delivery::new(
                    config,
                    store.clone(),
                    client,
                    Arc::default(),
                    Tasks::default(),
                );
                delivery.disable();
                Ok(Backend::Local(Management::new(
                    config, store, homeserver, delivery,
                )))
            }
            Err(StoreError::Locked(_)) => {
                if config.shared_secret_pending() {
                    anyhow::bail!("the server holds the database but mux.shared_secret is not set in the config");
                }
                Ok(Backend::Remote {
                    client,
                    base: format!("{}/_matrix/asmux", local_url(config.listen_addr())),
                    secret: config.mux.shared_secret.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn provision(
        &self,
        target: &BridgeRef,
        request: &ProvisionRequest,
    ) -> Result<(BridgeRegistration, bool)> {
        match self {
            Backend::Local(m) => Ok(m
                .provision(&Caller::Root, target, request.clone())
                .await
                .map_err(local)?),
            Backend::Remote { .. } => {
                let body = serde_json::to_vec(request)?;
                let (status, registration) =
                    self.call(Method::PUT, &path(target), Some(body)).await?;
                Ok((registration, status == StatusCode::CREATED))
            }
        }
    }

    pub async fn registration(&self, target: &BridgeRef) -> Result<BridgeRegistration> {
        match self {
            Backend::Local(m) => Ok(m.registration(&Caller::Root, target).map_err(local)?),
            Backend::Remote { .. } => Ok(self.call(Method::GET, &path(target), None).await?.1),
        }
    }

    pub async fn delete(&self, target: &BridgeRef) -> Result<()> {
        match self {
            Backend::Local(m) => m
                .delete(&Caller::Root, target)
                .await
                .map(drop)
                .map_err(local),
            Backend::Remote { .. } => {
                self.call::<serde_json::Value>(Method::DELETE, &path(target), None)
                    .await?;
                Ok(())
            }
        }
    }

    /// Drops the bridge's queue; how many sub-transactions went.
    pub async fn clear_queue(&self, target: &BridgeRef) -> Result<u64> {
        match self {
            Backend::Local(m) => Ok(m.clear_queue(&Caller::Root, target).await.map_err(local)?),
            Backend::Remote { .. } => {
                #[derive(serde::Deserialize)]
                struct Cleared {
                    dropped: u64,
                }
                let path = format!("{}/queue", path(target));
                let (_, cleared) = self.call::<Cleared>(Method::DELETE, &path, None).await?;
                Ok(cleared.dropped)
            }
        }
    }

    pub async fn list(&self) -> Result<Vec<BridgeSummary>> {
        match self {
            Backend::Local(m) => Ok(m.list(&Caller::Root).map_err(local)?),
            Backend::Remote { .. } => {
                #[derive(serde::Deserialize)]
                struct List {
                    appservices: Vec<BridgeSummary>,
                }
                let (_, list) = self.call::<List>(Method::GET, "/appservices", None).await?;
                Ok(list.appservices)
            }
        }
    }

    /// The status of every bridge. Offline, no bridge is connected.
    pub async fn statuses(&self) -> Result<Vec<BridgeStatus>> {
        match self {
            Backend::Local(m) => Ok(m.statuses(&Caller::Root).await.map_err(local)?),
            Backend::Remote { .. } => {
                #[derive(serde::Deserialize)]
                struct Statuses {
                    bridges: Vec<BridgeStatus>,
                }
                let (_, statuses) = self
                    .call::<Statuses>(Method::GET, "/appservices/status", None)
                    .await?;
                Ok(statuses.bridges)
            }
        }
    }

    /// Where the running server answers, or `None` when the data dir was opened directly.
    pub fn server(&self) -> Option<&str> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote { base, .. } => Some(base),
        }
    }

    /// Writes a backup to `path` (through a temporary file, mode 0600) and verifies it.
    pub async fn backup(&self, path: &std::path::Path) -> Result<crate::store::backup::Summary> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("partial");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut file = Progress::new(file);
        match self {
            Backend::Local(m) => {
                m.store().write_backup(&mut file, crate::store::now_ms())?;
            }
            Backend::Remote {
                client,
                base,
                secret,
            } => {
                use http_body_util::BodyExt;
                let request = http::Request::get(format!("{base}/admin/backup"))
                    .header(
                        http::header::AUTHORIZATION,
                        format!("Bearer {}", secret.expose()),
                    )
                    .body(full_body(Vec::new()))?;
                let response = client
                    .send(request)
                    .await
                    .context("the server did not answer")?;
                if !response.status().is_success() {
                    anyhow::bail!("the server refused the backup: {}", response.status());
                }
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.context("the backup download broke off")?.into_data() {
                        file.write_all(&data)?;
                    }
                }
            }
        }
        let file = file.finish();
        file.sync_all()?;
        drop(file);
        let summary = crate::store::backup::verify(&tmp)
            .with_context(|| format!("the backup written to {} does not verify", tmp.display()))?;
        crate::operator::setup::rename_durably(&tmp, path)?;
        Ok(summary)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T)> {
        let Backend::Remote {
            client,
            base,
            secret,
        } = self
        else {
            unreachable!("call is only used on the remote backend");
        };
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", secret.expose()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full_body(body.unwrap_or_default()))?;
        let response = client
            .send_buffered(request, REMOTE_TIMEOUT)
            .await
            .with_context(|| {
                format!("the database is in use, and the server at {base} did not answer")
            })?;
        if !response.status.is_success() {
            let err: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
            return Err(anyhow!(
                "{}: {}",
                err["errcode"].as_str().unwrap_or("M_UNKNOWN"),
                err["error"]
                    .as_str()
                    .unwrap_or("unexpected answer from the server")
            ));
        }
        // DELETE answers 204 without a body.
        let body = if response.body.is_empty() {
            b"null".as_slice()
        } else {
            &response.body
        };
        Ok((
            response.status,
            serde_json::from_slice(body).context("unexpected answer from the server")?,
        ))
    }
}

/// Counts what is written and, when stderr is a terminal, shows the count there.
struct Progress<W> {
    inner: W,
    bytes: u64,
    shown: std::time::Instant,
    tty: bool,
}

impl<W: std::io::Write> Progress<W> {
    fn new(inner: W) -> Self {
        use std::io::IsTerminal;
        Progress {
            inner,
            bytes: 0,
            shown: std::time::Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn finish(self) -> W {
        if self.tty && self.bytes > 0 {
            eprintln!("\r{:.1} MiB written", self.bytes as f64 / 1048576.0);
        }
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.tty && self.shown.elapsed() >= Duration::from_millis(250) {
            self.shown = std::time::Instant::now();
            eprint!("\r{:.1} MiB written", self.bytes as f64 / 1048576.0);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn path(target: &BridgeRef) -> String {
    match target {
        BridgeRef::Id(id) => format!("/appservice/{id}"),
        BridgeRef::Name { owner, prefix } => format!("/appservice/{owner}/{prefix}"),
    }
}

/// The same text the remote path prints for an API error.
fn local(err: Error) -> anyhow::Error {
    anyhow!("{}: {err}", err.errcode())
}
