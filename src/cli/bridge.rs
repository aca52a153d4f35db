//! `asmux bridge ...`: provisioning and inspecting bridges, on the data directory or
//! through the running server.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::args::{BridgeCommand, Format};
use super::backend::Backend;
use crate::config::Config;
use crate::operator::registration::BridgeRegistration;
use crate::operator::{bridge_config, setup};
use crate::service::management::{BridgeRef, BridgeSummary, ProvisionRequest};

pub(super) async fn run(config: Config, command: BridgeCommand) -> Result<ExitCode> {
    let backend = Backend::open(&config)?;
    let mut out = std::io::stdout().lock();
    match command {
        BridgeCommand::Create {
            owner,
            prefix,
            websocket,
            address,
            bot,
            format,
        } => {
            let target = BridgeRef::name(&owner, &prefix);
            let request = ProvisionRequest {
                push: Some(!websocket),
                address: address.or(websocket.then(String::new)),
                bot,
                ..ProvisionRequest::default()
            };
            let (registration, created) = backend.provision(&target, &request).await?;
            eprintln!(
                "{} bridge {owner}/{prefix} ({})",
                if created { "Created" } else { "Updated" },
                registration.id
            );
            write_registration(&mut out, &registration, format)?;
        }
        BridgeCommand::List => list(&mut out, &backend.list().await?)?,
        BridgeCommand::Show { bridge } => {
            let registration = backend.registration(&bridge_ref(&bridge)?).await?;
            show(&mut out, &registration, &config.homeserver.domain)?;
        }
        BridgeCommand::Delete { bridge } => {
            let target = bridge_ref(&bridge)?;
            backend.delete(&target).await?;
            writeln!(out, "Deleted bridge {}", bridge.join("/"))?;
        }
        BridgeCommand::ClearQueue { bridge } => {
            let target = bridge_ref(&bridge)?;
            let dropped = backend.clear_queue(&target).await?;
            writeln!(
                out,
                "Dropped {dropped} queued transactions of {}",
                bridge.join("/")
            )?;
        }
        BridgeCommand::Config {
            owner,
            prefix,
            flavor,
        } => {
            let registration = backend
                .registration(&BridgeRef::name(&owner, &prefix))
                .await?;
            let block = bridge_config::render(flavor, &config, &owner, &prefix, &registration)
                .map_err(anyhow::Error::msg)?;
            out.write_all(block.as_bytes())?;
        }
        BridgeCommand::ExportRegistration {
            owner,
            prefix,
            format,
            output,
        } => {
            let registration = backend
                .registration(&BridgeRef::name(&owner, &prefix))
                .await?;
            match output {
                Some(path) => {
                    let mut buf = Vec::new();
                    write_registration(&mut buf, &registration, format)?;
                    setup::write_atomically(&path, &buf, 0o600)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "Wrote the registration of {owner}/{prefix} to {}",
                        path.display()
                    );
                }
                None => write_registration(&mut out, &registration, format)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `asmux bridge list`: one line per bridge.
fn list(out: &mut impl Write, bridges: &[BridgeSummary]) -> Result<()> {
    writeln!(
        out,
        "{:<36}  {:<32}  {:<9}  ADDRESS",
        "ID", "BRIDGE", "MODE"
    )?;
    for b in bridges {
        let name = format!("{}/{}", b.owner, b.prefix);
        let mode = if b.push { "push" } else { "websocket" };
        writeln!(
            out,
            "{:<36}  {:<32}  {:<9}  {}",
            b.id, name, mode, b.address
        )?;
    }
    Ok(())
}

/// `asmux bridge show`: what identifies a bridge and how it is delivered to.
fn show(out: &mut impl Write, registration: &BridgeRegistration, domain: &str) -> Result<()> {
    let user_ns = registration
        .namespaces
        .users
        .first()
        .map(|n| n.regex.as_str())
        .unwrap_or("");
    writeln!(out, "id:         {}", registration.id)?;
    writeln!(
        out,
        "bot:        @{}:{domain}",
        registration.sender_localpart
    )?;
    writeln!(out, "namespace:  {user_ns}")?;
    let mode = if registration.url.is_empty() {
        "websocket (or push without address)".to_owned()
    } else {
        format!("push to {}", registration.url)
    };
    writeln!(out, "delivery:   {mode}")?;
    Ok(())
}

/// `OWNER PREFIX`, `OWNER/PREFIX` or `UUID`.
pub(super) fn bridge_ref(args: &[String]) -> Result<BridgeRef> {
    let target = match args {
        [owner, prefix] => Ok(BridgeRef::name(owner, prefix)),
        [one] => match one.split_once('/') {
            Some((owner, prefix)) => Ok(BridgeRef::name(owner, prefix)),
            None => BridgeRef::id(one),
        },
        _ => bail!("name a bridge as OWNER PREFIX, OWNER/PREFIX or UUID"),
    };
    Ok(target?)
}

fn write_registration(
    out: &mut impl Write,
    registration: &BridgeRegistration,
    format: Format,
) -> Result<()> {
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(registration)?,
        Format::Json => serde_json::to_string_pretty(registration)? + "\n",
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}
