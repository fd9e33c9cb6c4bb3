//! At the bench: `aplab power|console|keys|screen|tpm DEVICE ...`, one capability of one
//! device driven by hand through the same backends the engine uses. They never start
//! the virtual lab: a bench command that quietly booted a lab would hide the fact that
//! the engineer is not talking to what they think.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::device::build::{ControllerLocks, Wiring, build};
use crate::device::{DeviceError, DeviceHandle, EkCertificate, KeyPress, ReadBack};
use crate::model::inventory::{Capability, Device, Inventory};
use crate::model::scenario::FailureClass;

use super::exit;

/// Which inventory, shared by every bench command.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The device's id in the inventory.
    pub device: String,
    /// The lab inventory.
    #[arg(long, short, global = true)]
    pub inventory: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    State,
}

#[derive(Debug, clap::Args)]
pub struct PowerArgs {
    #[command(flatten)]
    pub target: Target,
    /// What to do; every action prints the state the controller reads back.
    pub action: PowerAction,
}

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also append every byte the device sends to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keys to press in order: `Enter`, `MetaLeft*5` (five times), `Ctrl+Shift+KeyD`.
    pub keys: Vec<String>,
    /// Text to type (US layout) after the keys.
    #[arg(long)]
    pub text: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    pub target: Target,
    /// Save the screen as a PNG.
    #[arg(long, value_name = "FILE.png")]
    pub snapshot: Option<PathBuf>,
    /// Decode the QR codes on screen and print their payloads.
    #[arg(long)]
    pub qr: bool,
}

#[derive(Debug, clap::Args)]
pub struct TpmArgs {
    #[command(flatten)]
    pub target: Target,
    /// Check the EK certificate against the inventory's `tpm.ek_ca` bundle.
    #[arg(long)]
    pub ek: bool,
    /// Create an AK and verify a quote over a fresh nonce.
    #[arg(long)]
    pub attest: bool,
}

pub fn power(args: PowerArgs) -> u8 {
    with_device(&args.target, Capability::Power, async |handle, _| {
        let Some(power) = &handle.power else {
            return Err(missing(&handle.id, Capability::Power));
        };
        let read_back = match args.action {
            PowerAction::On => power.on().await?,
            PowerAction::Off => power.off().await?,
            PowerAction::Cycle => power.cycle().await?,
            PowerAction::State => power.state().await?,
        };
        match read_back {
            ReadBack::Confirmed(state) => {
                let state = match state {
                    crate::device::PowerState::On => "on",
                    crate::device::PowerState::Off => "off",
                };
                println!("{}: power {state}", handle.id)
            }
            ReadBack::Unavailable(why) => {
                let asked = match args.action {
                    PowerAction::On => "power on requested; ",
                    PowerAction::Off => "power off requested; ",
                    PowerAction::Cycle => "power cycle requested; ",
                    PowerAction::State => "",
                };
                println!(
                    "{}: {asked}the power controller cannot report the state ({why})",
                    handle.id
                )
            }
        }
        Ok(exit::PASSED)
    })
}

pub fn keys(args: KeysArgs) -> u8 {
    if args.keys.is_empty() && args.text.is_none() {
        eprintln!("error: name at least one key (e.g. `Enter`, `MetaLeft*5`) or give --text");
        return exit::BAD_INPUT;
    }
    // Bad key names are bad input: refuse them all before pressing the first.
    let mut presses = Vec::new();
    for word in &args.keys {
        match key_press(word) {
            Ok(p) => presses.push(p),
            Err(message) => {
                eprintln!("error: {message}");
                return exit::BAD_INPUT;
            }
        }
    }
    if let Some(text) = &args.text
        && let Err(e) = crate::device::keyboard::text_strokes(text)
    {
        report(&e);
        return exit::BAD_INPUT;
    }
    with_device(&args.target, Capability::Keyboard, async |handle, _| {
        let Some(keyboard) = &handle.keyboard else {
            return Err(missing(&handle.id, Capability::Keyboard));
        };
        for press in &presses {
            keyboard.press(press).await?;
        }
        if let Some(text) = &args.text {
            keyboard.type_text(text).await?;
        }
        let mut done = Vec::new();
        if !args.keys.is_empty() {
            done.push(format!("pressed {}", args.keys.join(" ")));
        }
        if let Some(text) = &args.text {
            // The text may be a password: say how long it was, not what.
            done.push(format!("typed {} characters", text.chars().count()));
        }
        println!("{}: {}", handle.id, done.join(", "));
        Ok(exit::PASSED)
    })
}

pub fn screen(args: ScreenArgs) -> u8 {
    with_device(&args.target, Capability::Screen, async |handle, _| {
        let Some(screen) = &handle.screen else {
            return Err(missing(&handle.id, Capability::Screen));
        };
        println!("{}", screen.text().await?.trim_end());
        if args.snapshot.is_some() || args.qr {
            let png = screen.snapshot().await?;
            if let Some(file) = &args.snapshot {
                std::fs::write(file, &png).map_err(|e| {
                    DeviceError::config(format!("cannot write {}: {e}", file.display()))
                        .with_hint("check that the directory exists and is writable")
                })?;
                eprintln!("saved the screen to {}", file.display());
            }
            if args.qr {
                let codes = crate::device::screen::qr::decode(&png)?;
                if codes.is_empty() {
                    println!("no QR code on screen");
                }
                for code in codes {
                    println!("QR: {code}");
                }
            }
        }
        Ok(exit::PASSED)
    })
}

pub fn tpm(args: TpmArgs) -> u8 {
    with_device(&args.target, Capability::Tpm, async |handle, device| {
        let Some(tpm) = &handle.tpm else {
            return Err(missing(&handle.id, Capability::Tpm));
        };
        let facts = tpm.facts().await?;
        println!(
            "{}: TPM family {}, manufacturer {}, firmware {}{}",
            handle.id,
            facts.family,
            facts.manufacturer,
            facts.firmware,
            if facts.vendor.is_empty() {
                String::new()
            } else {
                format!(", vendor {}", facts.vendor)
            }
        );
        let mut code = exit::PASSED;
        if args.ek {
            let bundle = device.tpm.as_ref().and_then(|t| t.ek_ca_bundle.as_deref());
            if bundle.is_none() {
                eprintln!(
                    "note: {} has no `tpm.ek_ca` in the inventory: the chain is not checked",
                    handle.id
                );
            }
            match tpm.ek_certificate(bundle).await? {
                EkCertificate::Valid { issuer } => println!("EK certificate: valid ({issuer})"),
                EkCertificate::Missing => {
                    println!("EK certificate: missing (nothing in the TPM's NV index)");
                    code = exit::FAILED;
                }
                EkCertificate::Untrusted { issuer, reason } => {
                    println!("EK certificate: untrusted ({issuer}): {reason}");
                    code = exit::FAILED;
                }
            }
        }
        if args.attest {
            tpm.attest().await?;
            println!("attestation: quote over a fresh nonce verified");
        }
        Ok(code)
    })
}

/// Attaches the terminal to the device's console. On a terminal: raw mode, keys go to
/// the device, and `Enter ~ .` or `Ctrl-]` detaches. Otherwise stdin is piped to the
/// device until it ends.
pub fn console(args: ConsoleArgs) -> u8 {
    let (_inventory, device) = match resolve(&args.target, Capability::Console) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let Some(conn) = device.console.clone() else {
        return exit::BAD_INPUT;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INFRASTRUCTURE;
        }
    };
    let code = runtime.block_on(super::console::attach(&device.id, &conn, args.log));
    // The stdin reader is a blocking thread that may still wait for a key.
    runtime.shutdown_background();
    code
}

/// Parses `Key`, `Key*N`, `Mod+Mod+Key` and `Mod+Key*N`.
fn key_press(word: &str) -> Result<KeyPress, String> {
    let (combo, times) = match word.rsplit_once('*') {
        Some((combo, n)) => match n.parse::<u32>() {
            Ok(t) if (1..=100).contains(&t) => (combo, t),
            _ => return Err(format!("`{word}`: the count after `*` must be 1 to 100")),
        },
        None => (word, 1),
    };
    let mut parts: Vec<&str> = combo.split('+').collect();
    let key = parts.pop().unwrap_or_default().to_string();
    let press = KeyPress {
        key,
        modifiers: parts.into_iter().map(str::to_string).collect(),
        times,
    };
    crate::device::keyboard::stroke(&press).map_err(|e| {
        // Name the first word that is not a key, and the nearest key name to it.
        let modifier_ok = |m: &String| crate::device::keyboard::modifier_bit(m).is_some();
        let bad = press
            .modifiers
            .iter()
            .find(|m| !modifier_ok(m))
            .unwrap_or(&press.key);
        let names = crate::model::keys::all();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        match crate::model::problems::did_you_mean(bad, &names) {
            Some(m) => format!("{e} in `{word}` (did you mean `{m}`?)"),
            None => format!("{e} in `{word}`: {}", e.hint.as_deref().unwrap_or_default()),
        }
    })?;
    Ok(press)
}

/// Loads the inventory, finds the device and checks it has `capability`, and on a
/// virtual inventory that the lab is up. Errors are printed; the exit code is returned.
pub fn resolve(target: &Target, capability: Capability) -> Result<(Inventory, Device), u8> {
    let path = super::inputs::inventory_arg(&target.inventory);
    let inventory = super::inputs::inventory(&path)?;
    let Some(device) = inventory.devices.iter().find(|d| d.id == target.device) else {
        let ids: Vec<&str> = inventory.devices.iter().map(|d| d.id.as_str()).collect();
        let hint = match crate::model::problems::did_you_mean(&target.device, &ids) {
            Some(id) => format!("did you mean `{id}`?"),
            None => format!("devices: {}", ids.join(", ")),
        };
        eprintln!(
            "error: no device `{}` in {}: {hint}",
            target.device,
            path.display()
        );
        return Err(exit::BAD_INPUT);
    };
    if !device.has(capability) {
        eprintln!(
            "error: {} has no {} connection in {}",
            device.id,
            connection_word(capability),
            path.display()
        );
        return Err(exit::BAD_INPUT);
    }
    if let Some(control) = inventory
        .lab
        .virtual_lab
        .as_ref()
        .and_then(|v| v.control.as_ref())
        && std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((
                control
                    .host
                    .parse::<std::net::IpAddr>()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                control.port,
            )),
            Duration::from_secs(5),
        )
        .is_err()
    {
        eprintln!(
            "error: the virtual lab is not running (nothing answers on {}:{}): start it with `aplab lab up --inventory {}`",
            control.host,
            control.port,
            path.display()
        );
        return Err(exit::INFRASTRUCTURE);
    }
    let device = device.clone();
    Ok((inventory, device))
}

fn connection_word(c: Capability) -> &'static str {
    match c {
        Capability::Power => "power",
        Capability::Console => "console",
        Capability::Keyboard => "keyboard",
        Capability::Screen => "screen",
        Capability::Shell => "shell",
        Capability::Tpm => "TPM (`tpm_access`)",
        Capability::Tenant => "tenant",
    }
}

/// Resolves the device, builds only the backend `capability` needs (so a bench command
/// never opens the console reader or the tenant behind the engineer's back), and runs
/// `body` on a fresh runtime.
fn with_device(
    target: &Target,
    capability: Capability,
    body: impl AsyncFnOnce(&DeviceHandle, &Device) -> Result<u8, DeviceError>,
) -> u8 {
    let (inventory, device) = match resolve(target, capability) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INFRASTRUCTURE;
        }
    };
    runtime.block_on(async {
        let handle = match build(
            &only(&device, capability),
            &inventory,
            &Wiring {
                case_dir: std::env::temp_dir().join("aplab-bench"),
            },
            &ControllerLocks::default(),
        ) {
            Ok(h) => h,
            Err(e) => {
                report(&e);
                return code_for(&e);
            }
        };
        match body(&handle, &device).await {
            Ok(code) => code,
            Err(e) => {
                report(&e);
                code_for(&e)
            }
        }
    })
}

/// The device with every connection but `capability`'s removed.
fn only(device: &Device, capability: Capability) -> Device {
    let mut d = device.clone();
    let keep = |c: Capability| c == capability;
    if !keep(Capability::Power) {
        d.power = None;
    }
    if !keep(Capability::Console) {
        d.console = None;
    }
    if !keep(Capability::Keyboard) {
        d.keyboard = None;
    }
    if !keep(Capability::Screen) {
        d.screen = None;
    }
    if !keep(Capability::Tenant) {
        d.tenant = None;
    }
    // A TPM read through Windows needs the shell.
    let tpm_over_shell = matches!(d.tpm_access, Some(crate::model::inventory::TpmConn::Shell));
    let needs_shell = keep(Capability::Shell) || (keep(Capability::Tpm) && tpm_over_shell);
    if !needs_shell {
        d.shell = None;
    }
    if !keep(Capability::Tpm) {
        d.tpm_access = None;
    }
    d
}

fn missing(id: &str, capability: Capability) -> DeviceError {
    DeviceError::config(format!(
        "{id} has no {} connection",
        connection_word(capability)
    ))
}

pub fn report(e: &DeviceError) {
    eprintln!("error: {e}");
    if let Some(hint) = &e.hint {
        eprintln!("  hint: {hint}");
    }
    let _ = std::io::stderr().flush();
}

/// Exit code for a device error: bad configuration is bad input, a product answer is a
/// failure, anything else is the lab's infrastructure.
pub fn code_for(e: &DeviceError) -> u8 {
    match e.class {
        FailureClass::Config => exit::BAD_INPUT,
        FailureClass::Product => exit::FAILED,
        _ => exit::INFRASTRUCTURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_words_parse_with_counts_and_modifiers() {
        let p = key_press("MetaLeft*5").unwrap();
        assert_eq!((p.key.as_str(), p.times), ("MetaLeft", 5));
        assert!(p.modifiers.is_empty());
        let p = key_press("Ctrl+Shift+KeyD").unwrap();
        assert_eq!(p.key, "KeyD");
        assert_eq!(p.modifiers, ["Ctrl", "Shift"]);
        assert_eq!(p.times, 1);
    }

    #[test]
    fn bad_key_words_are_refused_with_a_suggestion() {
        assert!(
            key_press("Entr")
                .unwrap_err()
                .contains("did you mean `Enter`?")
        );
        assert!(key_press("Enter*0").unwrap_err().contains("1 to 100"));
        assert!(key_press("Enter*x").unwrap_err().contains("1 to 100"));
        assert!(
            key_press("Ctrl+Shfit+KeyD")
                .unwrap_err()
                .contains("`Shfit`")
        );
        assert!(key_press("").is_err());
    }
}
