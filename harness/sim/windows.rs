//! The Windows commands a lab runs on a simulated device over SSH, answered from a
//! [`WindowsSnapshot`] the way a lab image of Windows (OpenSSH server, PowerShell as the
//! default shell) answers them: `dsregcmd /status`, `Get-Tpm`, `reg query`,
//! `Get-ItemProperty`, `Get-WinEvent`, `Get-Service`, `Get-Content` of the IME logs and
//! `mdmdiagnosticstool.exe ... -zip`, which writes a real zip the lab can fetch by SFTP.
//!
//! Files a command writes go under `files_dir`, one directory per drive letter
//! (`C:\Users\labadmin\diag.zip` is `files_dir/C/Users/labadmin/diag.zip`); the SFTP
//! server maps paths the same way, through [`WinPath`], so nothing can escape it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::sim::clock::LabTime;
use crate::sim::snapshot::{JoinKind, WinEvent, WindowsSnapshot};

/// The lab account's home; relative paths start here.
pub const HOME: &str = r"C:\Users\labadmin";

/// Where the Intune Management Extension writes its logs.
pub const IME_LOG_DIR: &str = r"C:\ProgramData\Microsoft\IntuneManagementExtension\Logs";

const AUTOPILOT_KEY: &str =
    r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Provisioning\Diagnostics\Autopilot";
const ESP_DIAGNOSTICS_KEY: &str = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\Autopilot\EnrollmentStatusTracking\ESPTrackingInfo\Diagnostics";
const MDM_URL: &str = "https://enrollment.manage.microsoft.com/enrollmentserver/discovery.svc";

/// The event channels the lab image keeps (the ones Autopilot diagnostics read).
pub const CHANNELS: [&str; 4] = [
    "Microsoft-Windows-ModernDeployment-Diagnostics-Provider/Autopilot",
    "Microsoft-Windows-DeviceManagement-Enterprise-Diagnostics-Provider/Admin",
    "Microsoft-Windows-User Device Registration/Admin",
    "Microsoft-Windows-Shell-Core/Operational",
];

/// Runs one command line as the device's PowerShell would and returns
/// `(exit status, stdout, stderr)`, with Windows line endings.
pub fn run_command(
    snapshot: &WindowsSnapshot,
    command_line: &str,
    files_dir: &Path,
) -> (i32, String, String) {
    let (code, out, err) = match split_command_line(command_line) {
        Ok(words) => run_words(snapshot, &words, files_dir),
        Err(message) => (1, String::new(), parser_error(command_line, &message)),
    };
    (code, crlf(&out), crlf(&err))
}

fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// One word of a command line, and whether it was a bare `|` (a pipeline separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    Text(String),
    Pipe,
}

/// Splits a command line PowerShell-style: single quotes are literal (`''` is one quote),
/// double quotes allow `` `" `` and `""`, a backtick escapes the next character outside
/// quotes, and an unquoted `|` separates pipeline stages.
pub fn split_command_line(line: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            current.push('\'');
                        }
                        Some('\'') => break,
                        Some(other) => current.push(other),
                        None => return Err("The string is missing the terminator: '.".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            current.push('"');
                        }
                        Some('"') => break,
                        Some('`') => match chars.next() {
                            Some(escaped) => current.push(escaped),
                            None => {
                                return Err("The string is missing the terminator: \".".into());
                            }
                        },
                        Some(other) => current.push(other),
                        None => return Err("The string is missing the terminator: \".".into()),
                    }
                }
            }
            '`' => {
                in_word = true;
                if let Some(escaped) = chars.next() {
                    current.push(escaped);
                }
            }
            '|' => {
                if in_word {
                    words.push(Word::Text(std::mem::take(&mut current)));
                    in_word = false;
                }
                words.push(Word::Pipe);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(Word::Text(std::mem::take(&mut current)));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                current.push(other);
            }
        }
    }
    if in_word {
        words.push(Word::Text(current));
    }
    Ok(words)
}

fn parser_error(line: &str, message: &str) -> String {
    format!(
        "At line:1 char:{}\n+ {line}\n{message}\n    + CategoryInfo          : ParserError: (:) [], ParentContainsErrorRecordException\n    + FullyQualifiedErrorId : TerminatorExpectedAtEndOfString\n",
        line.chars().count().max(1)
    )
}

/// Formatting cmdlets a lab appends to a pipeline; the answer is already formatted.
const FORMATTERS: [&str; 6] = [
    "format-list",
    "fl",
    "out-string",
    "format-table",
    "ft",
    "out-host",
];

fn run_words(
    snapshot: &WindowsSnapshot,
    words: &[Word],
    files_dir: &Path,
) -> (i32, String, String) {
    let mut stages = words.split(|w| *w == Word::Pipe);
    let first: Vec<String> = stages
        .next()
        .unwrap_or_default()
        .iter()
        .filter_map(|w| match w {
            Word::Text(t) => Some(t.clone()),
            Word::Pipe => None,
        })
        .collect();
    for stage in stages {
        let name = match stage.first() {
            Some(Word::Text(t)) => t.to_ascii_lowercase(),
            _ => {
                return (
                    1,
                    String::new(),
                    "An empty pipe element is not allowed.\n".into(),
                );
            }
        };
        if !FORMATTERS.contains(&name.as_str()) {
            return (
                1,
                String::new(),
                format!(
                    "{name} : the lab image only accepts Format-List, Format-Table or Out-String after a pipe\n"
                ),
            );
        }
    }
    // The call operator runs a quoted command name: `& 'dsregcmd' '/status'`.
    let args: &[String] = match first.split_first() {
        Some((amp, rest)) if amp == "&" => rest,
        _ => &first,
    };
    let Some((program, args)) = args.split_first() else {
        return (0, String::new(), String::new());
    };
    let name = program.to_ascii_lowercase();
    let name = name.strip_suffix(".exe").unwrap_or(&name);
    let name = name.rsplit(['\\', '/']).next().unwrap_or(name);
    let ok = |out: String| (0, out, String::new());
    match name {
        "dsregcmd" => dsregcmd(snapshot, args),
        "get-tpm" => ok(get_tpm(snapshot)),
        "reg" => reg(snapshot, args),
        "get-itemproperty" | "gp" => get_item_property(snapshot, args),
        "get-winevent" => get_win_event(snapshot, args),
        "mdmdiagnosticstool" => mdm_diagnostics_tool(snapshot, args, files_dir),
        "get-service" | "gsv" => get_service(snapshot, args),
        "get-content" | "type" | "cat" | "gc" => get_content(snapshot, args, files_dir),
        "test-path" => test_path(snapshot, args, files_dir),
        "remove-item" | "del" | "rm" | "erase" => remove_item(args, files_dir),
        "hostname" => ok(format!("{}\n", snapshot.computer_name())),
        "whoami" => ok(format!(
            "{}\\labadmin\n",
            snapshot.computer_name().to_lowercase()
        )),
        _ => (1, String::new(), not_recognized(program)),
    }
}

fn not_recognized(program: &str) -> String {
    let marks = "~".repeat(program.chars().count().max(1));
    format!(
        "{program} : The term '{program}' is not recognized as the name of a cmdlet, function, script file, or operable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again.\nAt line:1 char:1\n+ {program}\n+ {marks}\n    + CategoryInfo          : ObjectNotFound: ({program}:String) [], CommandNotFoundException\n    + FullyQualifiedErrorId : CommandNotFoundException\n"
    )
}

/// A cmdlet's named parameter (`-Name value`, case-insensitive, any unique prefix is not
/// supported: the lab uses full names) or, failing that, its first positional argument.
fn parameter<'a>(args: &'a [String], name: &str, positional: bool) -> Option<&'a str> {
    let flag = format!("-{name}");
    let mut i = 0;
    let mut first_positional = None;
    while i < args.len() {
        let arg = &args[i];
        if arg.eq_ignore_ascii_case(&flag) {
            return args.get(i + 1).map(String::as_str);
        }
        if let Some((key, value)) = arg.split_once(':')
            && key.eq_ignore_ascii_case(&flag)
        {
            return Some(value);
        }
        if arg.starts_with('-') && arg.len() > 1 {
            i += 2;
            continue;
        }
        if first_positional.is_none() {
            first_positional = Some(arg.as_str());
        }
        i += 1;
    }
    if positional { first_positional } else { None }
}

fn yes_no(v: bool) -> &'static str {
    if v { "YES" } else { "NO" }
}

fn true_false(v: bool) -> &'static str {
    if v { "True" } else { "False" }
}

/// A GUID that stays the same for the same inputs (FNV-1a over the parts).
pub fn stable_guid(parts: &[&str]) -> String {
    let mut bytes = [0u8; 16];
    for (half, salt) in [
        (0usize, 0xcbf2_9ce4_8422_2325u64),
        (8, 0x8422_2325_cbf2_9ce4),
    ] {
        let mut hash = salt;
        for part in parts {
            for b in part.bytes().chain([0u8]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        bytes[half..half + 8].copy_from_slice(&hash.to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn entra_device_id(s: &WindowsSnapshot) -> String {
    s.entra_device_id
        .clone()
        .unwrap_or_else(|| stable_guid(&["entra-device", &s.device_id, &s.serial]))
}

fn domain_name(s: &WindowsSnapshot) -> String {
    s.tenant_domain
        .as_deref()
        .and_then(|d| d.split('.').next())
        .filter(|d| !d.is_empty())
        .unwrap_or("LAB")
        .to_ascii_uppercase()
}

fn section(out: &mut String, title: &str) {
    let bar = format!("+{}+", "-".repeat(70));
    let _ = write!(out, "\n{bar}\n| {title:<69}|\n{bar}\n\n");
}

fn field(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "{name:>26} : {value}");
}

/// `dsregcmd /status`, in the real tool's layout.
fn dsregcmd(s: &WindowsSnapshot, args: &[String]) -> (i32, String, String) {
    if !args.iter().any(|a| a.eq_ignore_ascii_case("/status")) {
        return (
            1,
            "DSREGCMD switches\n                        /? : Displays the help message for DSREGCMD\n                   /status : Displays the device join status\n                    /join  : Schedules and monitors the Autojoin task to Hybrid Join the device\n".into(),
            String::new(),
        );
    }
    let aad = s.azure_ad_joined;
    let domain = s.domain_joined;
    let mut out = String::new();
    section(&mut out, "Device State");
    field(&mut out, "AzureAdJoined", yes_no(aad));
    field(&mut out, "EnterpriseJoined", "NO");
    field(&mut out, "DomainJoined", yes_no(domain));
    if domain {
        field(&mut out, "DomainName", &domain_name(s));
    }
    field(&mut out, "Device Name", &s.computer_name());
    if aad {
        let tpm = s.tpm.present && s.tpm.ready;
        section(&mut out, "Device Details");
        field(&mut out, "DeviceId", &entra_device_id(s));
        field(
            &mut out,
            "Thumbprint",
            &stable_guid(&["thumbprint", &s.device_id])
                .replace('-', "")
                .to_uppercase(),
        );
        field(
            &mut out,
            "KeyContainerId",
            &stable_guid(&["key-container", &s.device_id]),
        );
        field(
            &mut out,
            "KeyProvider",
            if tpm {
                "Microsoft Platform Crypto Provider"
            } else {
                "Microsoft Software Key Storage Provider"
            },
        );
        field(&mut out, "TpmProtected", yes_no(tpm));
        field(&mut out, "DeviceAuthStatus", "SUCCESS");
    }
    if aad || s.tenant_id.is_some() {
        section(&mut out, "Tenant Details");
        if let Some(domain) = &s.tenant_domain {
            field(&mut out, "TenantName", domain);
        }
        field(&mut out, "TenantId", s.tenant_id.as_deref().unwrap_or(""));
        if aad {
            field(&mut out, "MdmUrl", MDM_URL);
            field(
                &mut out,
                "MdmComplianceUrl",
                "https://portal.manage.microsoft.com/?portalAction=Compliance",
            );
        }
    }
    section(&mut out, "User State");
    field(&mut out, "NgcSet", "NO");
    field(&mut out, "WorkplaceJoined", "NO");
    field(&mut out, "WamDefaultSet", yes_no(user_signed_in(s)));
    section(&mut out, "SSO State");
    field(&mut out, "AzureAdPrt", yes_no(user_signed_in(s)));
    if user_signed_in(s) {
        field(
            &mut out,
            "AzureAdPrtAuthority",
            &format!(
                "https://login.microsoftonline.com/{}",
                s.tenant_id.as_deref().unwrap_or("")
            ),
        );
    }
    field(&mut out, "EnterprisePrt", "NO");
    section(&mut out, "Diagnostic Data");
    field(&mut out, "AadRecoveryEnabled", "NO");
    // Only HRESULTs (join and enrollment errors) show here; app failures do not.
    if let Some(error) = s.last_error.as_ref().filter(|e| e.starts_with("0x")) {
        field(&mut out, "Last Error", error);
    }
    field(&mut out, "Executing Account Name", "labadmin");
    (0, out, String::new())
}

/// A user has signed in (the user flow reached account setup or the desktop): only then
/// does the device hold a Primary Refresh Token.
fn user_signed_in(s: &WindowsSnapshot) -> bool {
    let phase = s.esp_phase.to_ascii_lowercase();
    s.azure_ad_joined && (phase.contains("account") || phase.contains("desktop"))
}

/// The TPM vendor id as Windows shows it: the four ASCII bytes as a big-endian number.
fn manufacturer_id(txt: &str) -> u32 {
    let mut bytes = [0u8; 4];
    for (slot, b) in bytes.iter_mut().zip(txt.bytes()) {
        *slot = b;
    }
    u32::from_be_bytes(bytes)
}

/// `Get-Tpm`, Format-List style.
fn get_tpm(s: &WindowsSnapshot) -> String {
    let t = &s.tpm;
    let mut out = String::from("\n");
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<25} : {value}");
    };
    line("TpmPresent", true_false(t.present));
    line("TpmReady", true_false(t.present && t.ready));
    line("TpmEnabled", true_false(t.present && t.enabled));
    line("TpmActivated", true_false(t.present && t.activated));
    line("TpmOwned", true_false(t.present && t.owned));
    line("RestartPending", "False");
    if t.present {
        line(
            "ManufacturerId",
            &manufacturer_id(&t.manufacturer_id_txt).to_string(),
        );
        line("ManufacturerIdTxt", &t.manufacturer_id_txt);
        line("ManufacturerVersion", &t.manufacturer_version);
        line(
            "ManufacturerVersionFull20",
            if t.family == "2.0" {
                &t.manufacturer_version
            } else {
                "Not Supported for TPM 1.2"
            },
        );
    } else {
        line("ManufacturerId", "0");
        line("ManufacturerIdTxt", "");
        line("ManufacturerVersion", "");
        line("ManufacturerVersionFull20", "");
    }
    line("ManagedAuthLevel", "Full");
    line("OwnerAuth", "");
    line("OwnerClearDisabled", "False");
    line("AutoProvisioning", "Enabled");
    line("LockedOut", true_false(t.locked_out));
    line("LockoutHealTime", "2 hours");
    line("LockoutCount", if t.locked_out { "32" } else { "0" });
    line("LockoutMax", "32");
    line("SelfTest", "{}");
    out.push('\n');
    out
}

/// A registry value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RegValue {
    Sz(String),
    Dword(u32),
}

struct RegKey {
    path: String,
    values: Vec<(String, RegValue)>,
}

/// App install states in ESPTrackingInfo: 1 not installed, 2 in progress, 3 success,
/// 4 error.
fn app_state(s: &WindowsSnapshot) -> u32 {
    let phase = s.esp_phase.to_ascii_lowercase();
    if s.last_error.is_some() {
        4
    } else if s.technician_completed_at.is_some() || phase.contains("complete") {
        3
    } else if phase.contains("setup") {
        2
    } else {
        1
    }
}

/// The registry keys Autopilot diagnostics read, as the device's state has them.
fn registry(s: &WindowsSnapshot) -> Vec<RegKey> {
    let mut keys = Vec::new();
    let mut autopilot = vec![("IsAutopilotDisabled".to_string(), RegValue::Dword(0))];
    if let Some(profile) = &s.profile_name {
        let hybrid = s.join == Some(JoinKind::Hybrid);
        autopilot.extend([
            (
                "CloudAssignedTenantId".to_string(),
                RegValue::Sz(s.tenant_id.clone().unwrap_or_default()),
            ),
            (
                "CloudAssignedTenantDomain".to_string(),
                RegValue::Sz(s.tenant_domain.clone().unwrap_or_default()),
            ),
            ("CloudAssignedOobeConfig".to_string(), RegValue::Dword(1310)),
            (
                "CloudAssignedForcedEnrollment".to_string(),
                RegValue::Dword(1),
            ),
            (
                "CloudAssignedDomainJoinMethod".to_string(),
                RegValue::Dword(u32::from(hybrid)),
            ),
            (
                "DeploymentProfileName".to_string(),
                RegValue::Sz(profile.clone()),
            ),
            (
                "TenantMatched".to_string(),
                RegValue::Dword(u32::from(s.tenant_id.is_some())),
            ),
            (
                "AutopilotServiceCorrelationId".to_string(),
                RegValue::Sz(stable_guid(&["correlation", &s.device_id])),
            ),
        ]);
    }
    keys.push(RegKey {
        path: AUTOPILOT_KEY.into(),
        values: autopilot,
    });
    let mut correlations = Vec::new();
    if let Some(ztd) = &s.ztd_id {
        correlations.push(("ZTDRegistrationID".to_string(), RegValue::Sz(ztd.clone())));
    }
    keys.push(RegKey {
        path: format!(r"{AUTOPILOT_KEY}\EstablishedCorrelations"),
        values: correlations,
    });
    if s.profile_name.is_some() {
        let state = app_state(s);
        keys.push(RegKey {
            path: ESP_DIAGNOSTICS_KEY.into(),
            values: vec![("ESPPhase".to_string(), RegValue::Sz(s.esp_phase.clone()))],
        });
        keys.push(RegKey {
            path: format!(r"{ESP_DIAGNOSTICS_KEY}\Sidecar"),
            values: ["company-portal", "vpn-client"]
                .iter()
                .map(|app| {
                    (
                        format!("Win32App_{}_1", stable_guid(&["app", app])),
                        RegValue::Dword(state),
                    )
                })
                .collect(),
        });
    }
    keys
}

/// `HKLM\...`, `HKLM:\...`, `Registry::HKEY_LOCAL_MACHINE\...` -> `HKEY_LOCAL_MACHINE\...`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("Registry::")
        .or_else(|| key.strip_prefix("registry::"))
        .unwrap_or(key);
    let key = key.trim_end_matches('\\').replace('/', "\\");
    let (root, rest) = key.split_once('\\').unwrap_or((&key, ""));
    let root = match root.trim_end_matches(':').to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => "HKEY_LOCAL_MACHINE",
        "HKCU" | "HKEY_CURRENT_USER" => "HKEY_CURRENT_USER",
        other => return other.to_string(),
    }
    .to_string();
    if rest.is_empty() {
        root
    } else {
        format!("{root}\\{rest}")
    }
}

/// Finds `key` (case-insensitively) and its subkeys. A key that exists only as a parent of
/// modelled keys is still found, with no values.
fn find_keys<'a>(keys: &'a [RegKey], key: &str) -> Option<(Option<&'a RegKey>, Vec<&'a RegKey>)> {
    let lower = key.to_ascii_lowercase();
    let prefix = format!("{lower}\\");
    let exact = keys.iter().find(|k| k.path.to_ascii_lowercase() == lower);
    let below: Vec<&RegKey> = keys
        .iter()
        .filter(|k| k.path.to_ascii_lowercase().starts_with(&prefix))
        .collect();
    if exact.is_none() && below.is_empty() {
        None
    } else {
        Some((exact, below))
    }
}

fn reg_value_text(value: &RegValue) -> (&'static str, String) {
    match value {
        RegValue::Sz(s) => ("REG_SZ", s.clone()),
        RegValue::Dword(d) => ("REG_DWORD", format!("0x{d:x}")),
    }
}

/// `reg query KEY [/v NAME] [/s]`.
fn reg(s: &WindowsSnapshot, args: &[String]) -> (i32, String, String) {
    let invalid = || {
        (
            1,
            String::new(),
            "ERROR: Invalid syntax.\nType \"REG QUERY /?\" for usage.\n".to_string(),
        )
    };
    let Some((op, rest)) = args.split_first() else {
        return invalid();
    };
    if !op.eq_ignore_ascii_case("query") {
        return (
            1,
            String::new(),
            format!("ERROR: the lab image only allows REG QUERY, not REG {op}.\n"),
        );
    }
    let Some((key, options)) = rest.split_first() else {
        return invalid();
    };
    let mut value_name = None;
    let mut recursive = false;
    let mut i = 0;
    while i < options.len() {
        match options[i].to_ascii_lowercase().as_str() {
            "/s" => recursive = true,
            "/v" => {
                value_name = options.get(i + 1).cloned();
                if value_name.is_none() {
                    return invalid();
                }
                i += 1;
            }
            _ => return invalid(),
        }
        i += 1;
    }
    let keys = registry(s);
    let key = normalize_key(key);
    let not_found = (
        1,
        String::new(),
        "ERROR: The system was unable to find the specified registry key or value.\n".to_string(),
    );
    let Some((exact, below)) = find_keys(&keys, &key) else {
        return not_found;
    };
    let mut out = String::new();
    let print_key = |path: &str, values: &[(String, RegValue)], out: &mut String| {
        let _ = writeln!(out, "\n{path}");
        for (name, value) in values {
            if value_name
                .as_ref()
                .is_some_and(|v| !v.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let (kind, text) = reg_value_text(value);
            let _ = writeln!(out, "    {name}    {kind}    {text}");
        }
    };
    let own_values = exact.map(|k| k.values.as_slice()).unwrap_or(&[]);
    if let Some(name) = &value_name
        && !recursive
        && !own_values.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        return not_found;
    }
    print_key(&key, own_values, &mut out);
    if recursive {
        for sub in &below {
            print_key(&sub.path, &sub.values, &mut out);
        }
    } else if value_name.is_none() {
        let depth = key.matches('\\').count() + 1;
        let mut children: Vec<String> = below
            .iter()
            .map(|k| {
                k.path
                    .split('\\')
                    .take(depth + 1)
                    .collect::<Vec<_>>()
                    .join("\\")
            })
            .collect();
        children.dedup();
        if !children.is_empty() {
            out.push('\n');
        }
        for child in children {
            let _ = writeln!(out, "{child}");
        }
    }
    if recursive && value_name.is_some() {
        let _ = writeln!(out, "\nEnd of search: matches found.");
    }
    (0, out, String::new())
}

/// `Get-ItemProperty -Path 'HKLM:\...' [-Name X]`.
fn get_item_property(s: &WindowsSnapshot, args: &[String]) -> (i32, String, String) {
    let Some(path) = parameter(args, "Path", true) else {
        return (
            1,
            String::new(),
            "Get-ItemProperty : Cannot bind argument to parameter 'Path' because it is null.\n"
                .into(),
        );
    };
    let key = normalize_key(path);
    let keys = registry(s);
    let Some((exact, _)) = find_keys(&keys, &key) else {
        return (
            1,
            String::new(),
            format!(
                "Get-ItemProperty : Cannot find path '{path}' because it does not exist.\n    + CategoryInfo          : ObjectNotFound: ({path}:String) [Get-ItemProperty], ItemNotFoundException\n"
            ),
        );
    };
    let wanted = parameter(args, "Name", false);
    let own: &[(String, RegValue)] = exact.map(|k| k.values.as_slice()).unwrap_or(&[]);
    let values: Vec<&(String, RegValue)> = own
        .iter()
        .filter(|(n, _)| wanted.is_none_or(|w| w.eq_ignore_ascii_case(n)))
        .collect();
    if let Some(name) = wanted
        && values.is_empty()
    {
        return (
            1,
            String::new(),
            format!(
                "Get-ItemProperty : Property {name} does not exist at path {}.\n",
                key
            ),
        );
    }
    let width = values
        .iter()
        .map(|(n, _)| n.len())
        .chain(["PSPath".len(), "PSParentPath".len()])
        .max()
        .unwrap_or(0);
    let mut out = String::from("\n");
    for (name, value) in values {
        let text = match value {
            RegValue::Sz(s) => s.clone(),
            RegValue::Dword(d) => d.to_string(),
        };
        let _ = writeln!(out, "{name:<width$} : {text}");
    }
    let (parent, child) = key.rsplit_once('\\').unwrap_or(("", &key));
    let _ = writeln!(
        out,
        "{:<width$} : Microsoft.PowerShell.Core\\Registry::{key}",
        "PSPath"
    );
    let _ = writeln!(
        out,
        "{:<width$} : Microsoft.PowerShell.Core\\Registry::{parent}",
        "PSParentPath"
    );
    let _ = writeln!(out, "{:<width$} : {child}", "PSChildName");
    out.push('\n');
    (0, out, String::new())
}

/// Wall-clock text for a lab time, the way PowerShell prints dates (en-US, UTC).
fn time_text(at: LabTime) -> String {
    let secs = i64::try_from(at.as_secs()).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(ts) => ts.strftime("%-m/%-d/%Y %-I:%M:%S %p").to_string(),
        Err(_) => "1/1/1970 12:00:00 AM".to_string(),
    }
}

fn event_level(event: &WinEvent) -> &'static str {
    match event.id {
        171 | 172 | 807 | 809 | 815 | 908 | 304 => "Error",
        110 => "Warning",
        _ if event.message.to_ascii_lowercase().contains("fail") => "Error",
        _ => "Information",
    }
}

fn provider_of(channel: &str) -> &str {
    channel.split('/').next().unwrap_or(channel)
}

/// The device's events on `channel`, newest first.
fn channel_events<'a>(s: &'a WindowsSnapshot, channel: &str) -> Vec<&'a WinEvent> {
    let mut events: Vec<&WinEvent> = s
        .events
        .iter()
        .filter(|e| e.channel.eq_ignore_ascii_case(channel))
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.at));
    events
}

/// `Get-WinEvent -LogName CHANNEL [-MaxEvents N]`.
fn get_win_event(s: &WindowsSnapshot, args: &[String]) -> (i32, String, String) {
    let Some(log) = parameter(args, "LogName", true) else {
        return (
            1,
            String::new(),
            "Get-WinEvent : the lab image needs -LogName <channel>.\n".into(),
        );
    };
    let Some(channel) = CHANNELS.iter().find(|c| c.eq_ignore_ascii_case(log)) else {
        return (
            1,
            String::new(),
            format!(
                "Get-WinEvent : There is not an event log on the localhost computer that matches \"{log}\".\n    + CategoryInfo          : ObjectNotFound: (:) [Get-WinEvent], Exception\n    + FullyQualifiedErrorId : NoMatchingLogsFound,Microsoft.PowerShell.Commands.GetWinEventCommand\n"
            ),
        );
    };
    let max = match parameter(args, "MaxEvents", false) {
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return (
                    1,
                    String::new(),
                    format!(
                        "Get-WinEvent : Cannot validate argument on parameter 'MaxEvents'. The argument \"{n}\" is not a positive number.\n"
                    ),
                );
            }
        },
        None => usize::MAX,
    };
    let events: Vec<&WinEvent> = channel_events(s, channel).into_iter().take(max).collect();
    if events.is_empty() {
        return (
            1,
            String::new(),
            "Get-WinEvent : No events were found that match the specified selection criteria.\n    + CategoryInfo          : ObjectNotFound: (:) [Get-WinEvent], Exception\n    + FullyQualifiedErrorId : NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand\n".into(),
        );
    }
    let mut out = format!(
        "\n\n   ProviderName: {}\n\nTimeCreated                      Id LevelDisplayName Message\n-----------                      -- ---------------- -------\n",
        provider_of(channel)
    );
    for e in events {
        let _ = writeln!(
            out,
            "{:<25} {:>9} {:<16} {}",
            time_text(e.at),
            e.id,
            event_level(e),
            e.message.replace(['\r', '\n'], " ")
        );
    }
    out.push('\n');
    (0, out, String::new())
}

/// `Get-Service wlidsvc` (the Microsoft Account Sign-In Assistant).
fn get_service(s: &WindowsSnapshot, args: &[String]) -> (i32, String, String) {
    let name = parameter(args, "Name", true).unwrap_or("wlidsvc");
    if !name.eq_ignore_ascii_case("wlidsvc") {
        return (
            1,
            String::new(),
            format!(
                "Get-Service : Cannot find any service with service name '{name}'.\n    + CategoryInfo          : ObjectNotFound: ({name}:String) [Get-Service], ServiceCommandException\n"
            ),
        );
    }
    let status = if s.wlidsvc_disabled {
        "Stopped"
    } else {
        "Running"
    };
    let out = format!(
        "\nStatus   Name               DisplayName\n------   ----               -----------\n{status:<8} wlidsvc            Microsoft Account Sign-in Assistant\n\n"
    );
    (0, out, String::new())
}

/// A Windows path resolved against the lab account's home, free of `.` and `..`: the only
/// way a command or the SFTP server turns a device path into a file under `files_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinPath {
    drive: char,
    parts: Vec<String>,
}

impl WinPath {
    /// Parses `C:\a\b`, `C:/a/b`, `/C:/a/b` (SFTP style), `\a\b` (drive C) or `a\b`
    /// (relative to [`HOME`]). `None` for names Windows would refuse (`:`, `*`, NUL...).
    pub fn parse(path: &str) -> Option<WinPath> {
        let path = path.replace('/', "\\");
        let trimmed = path.strip_prefix('\\').unwrap_or(&path);
        let mut chars = trimmed.chars();
        let (mut drive, rest, relative) = match (chars.next(), chars.next()) {
            (Some(d), Some(':')) if d.is_ascii_alphabetic() => {
                (d.to_ascii_uppercase(), chars.as_str().to_string(), false)
            }
            _ if path.starts_with('\\') => ('C', path.clone(), false),
            _ => ('C', path.clone(), true),
        };
        let mut parts: Vec<String> = Vec::new();
        if relative {
            parts.extend(HOME[3..].split('\\').map(str::to_string));
        }
        for part in rest.split('\\') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                // A drive inside a path (`/C:/Users/labadmin/C:/x`, as SFTP clients
                // make of a Windows path they take for relative) starts over there.
                name if name.len() == 2
                    && name.ends_with(':')
                    && name.as_bytes()[0].is_ascii_alphabetic() =>
                {
                    drive = char::from(name.as_bytes()[0]).to_ascii_uppercase();
                    parts.clear();
                }
                name => {
                    if name
                        .chars()
                        .any(|c| c.is_control() || "<>:\"|?*".contains(c))
                    {
                        return None;
                    }
                    parts.push(name.to_string());
                }
            }
        }
        Some(WinPath { drive, parts })
    }

    /// `C:\Users\labadmin\diag.zip`.
    pub fn display(&self) -> String {
        format!("{}:\\{}", self.drive, self.parts.join("\\"))
    }

    /// `/C:/Users/labadmin/diag.zip`, the form Windows' SFTP server reports.
    pub fn sftp(&self) -> String {
        format!("/{}:/{}", self.drive, self.parts.join("/"))
    }

    /// Where the file lives under `files_dir`.
    pub fn local(&self, files_dir: &Path) -> PathBuf {
        let mut p = files_dir.join(self.drive.to_string());
        for part in &self.parts {
            p.push(part);
        }
        p
    }

    fn eq_ignore_case(&self, other: &str) -> bool {
        WinPath::parse(other).is_some_and(|o| {
            o.drive == self.drive
                && o.parts.len() == self.parts.len()
                && o.parts
                    .iter()
                    .zip(&self.parts)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        })
    }
}

/// Files the device makes up from its state rather than keeps on disk: the IME logs.
pub fn generated_file(s: &WindowsSnapshot, path: &WinPath) -> Option<Vec<u8>> {
    ["IntuneManagementExtension.log", "AppWorkload.log"]
        .iter()
        .any(|name| path.eq_ignore_case(&format!(r"{IME_LOG_DIR}\{name}")))
        .then(|| ime_log(s).into_bytes())
}

/// One CMTrace-format line, as the IME writes its logs.
fn ime_line(at: LabTime, kind: u8, message: &str) -> String {
    let secs = i64::try_from(at.as_secs()).unwrap_or(0);
    let (time, date) = match jiff::Timestamp::from_second(secs) {
        Ok(ts) => (
            format!("{}.{:07}", ts.strftime("%H:%M:%S"), at.subsec_nanos() / 100),
            ts.strftime("%m-%d-%Y").to_string(),
        ),
        Err(_) => ("00:00:00.0000000".into(), "01-01-1970".into()),
    };
    format!(
        "<![LOG[{message}]LOG]!><time=\"{time}\" date=\"{date}\" component=\"IntuneManagementExtension\" context=\"\" type=\"{kind}\" thread=\"14\" file=\"\">\n"
    )
}

/// The IME log: app detection lines, and the NotComputed failure when the device's IME
/// certificates expired (user flow run more than 6 months after the technician flow).
fn ime_log(s: &WindowsSnapshot) -> String {
    let mut log = String::new();
    let Some(started) = s
        .technician_completed_at
        .or_else(|| (app_state(s) > 1).then_some(s.now))
    else {
        return log;
    };
    log.push_str(&ime_line(
        started,
        1,
        "[Win32App] ----------------------------------------------------- application poller starts. -----------------------------------------------------",
    ));
    let not_computed = s
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("NotComputed"));
    for app in ["company-portal", "vpn-client"] {
        let id = stable_guid(&["app", app]);
        let at = if not_computed { s.now } else { started };
        if not_computed {
            log.push_str(&ime_line(
                at,
                3,
                &format!(
                    "[Win32App][DetectionActionHandler] Detection for policy with id: {id} resulted in action status: Failed and detection state: NotComputed"
                ),
            ));
        } else if app_state(s) == 3 {
            log.push_str(&ime_line(
                at,
                1,
                &format!(
                    "[Win32App][DetectionActionHandler] Detection for policy with id: {id} resulted in action status: Success and detection state: Detected"
                ),
            ));
        }
    }
    log
}

/// `Get-Content PATH`: a file a command wrote, or a generated log.
fn get_content(s: &WindowsSnapshot, args: &[String], files_dir: &Path) -> (i32, String, String) {
    let missing = |p: &str| {
        (
            1,
            String::new(),
            format!(
                "Get-Content : Cannot find path '{p}' because it does not exist.\n    + CategoryInfo          : ObjectNotFound: ({p}:String) [Get-Content], ItemNotFoundException\n"
            ),
        )
    };
    let Some(raw) = parameter(args, "Path", true) else {
        return missing("");
    };
    let Some(path) = WinPath::parse(raw) else {
        return missing(raw);
    };
    if let Some(bytes) = generated_file(s, &path) {
        return (
            0,
            String::from_utf8_lossy(&bytes).into_owned(),
            String::new(),
        );
    }
    match std::fs::read(path.local(files_dir)) {
        Ok(bytes) => (
            0,
            String::from_utf8_lossy(&bytes).into_owned(),
            String::new(),
        ),
        Err(_) => missing(&path.display()),
    }
}

fn test_path(s: &WindowsSnapshot, args: &[String], files_dir: &Path) -> (i32, String, String) {
    let exists = parameter(args, "Path", true)
        .and_then(WinPath::parse)
        .is_some_and(|p| generated_file(s, &p).is_some() || p.local(files_dir).exists());
    (0, format!("{}\n", true_false(exists)), String::new())
}

fn remove_item(args: &[String], files_dir: &Path) -> (i32, String, String) {
    let raw = parameter(args, "Path", true).unwrap_or("");
    match WinPath::parse(raw).map(|p| p.local(files_dir)) {
        Some(local) if local.is_file() && std::fs::remove_file(&local).is_ok() => {
            (0, String::new(), String::new())
        }
        _ => (
            1,
            String::new(),
            format!(
                "Remove-Item : Cannot find path '{raw}' because it does not exist.\n    + CategoryInfo          : ObjectNotFound: ({raw}:String) [Remove-Item], ItemNotFoundException\n"
            ),
        ),
    }
}

const AREAS: [&str; 5] = [
    "DeviceEnrollment",
    "DeviceProvisioning",
    "Autopilot",
    "TPM",
    "ManagementService",
];

/// `mdmdiagnosticstool.exe -area "A;B" -zip PATH`: writes a real zip.
fn mdm_diagnostics_tool(
    s: &WindowsSnapshot,
    args: &[String],
    files_dir: &Path,
) -> (i32, String, String) {
    let usage = "Usage: MdmDiagnosticsTool.exe -area <area name(s)> -zip <zip file path>\n  areas: DeviceEnrollment;DeviceProvisioning;Autopilot;TPM;ManagementService\n";
    let Some(areas) = parameter(args, "area", false) else {
        return (1, usage.into(), String::new());
    };
    let areas: Vec<&str> = areas.split(';').filter(|a| !a.is_empty()).collect();
    if let Some(bad) = areas
        .iter()
        .find(|a| !AREAS.iter().any(|k| k.eq_ignore_ascii_case(a)))
    {
        return (
            1,
            String::new(),
            format!("MdmDiagnosticsTool: unknown area '{bad}'.\n{usage}"),
        );
    }
    if parameter(args, "cab", false).is_some() {
        return (
            1,
            String::new(),
            "MdmDiagnosticsTool: the lab image writes -zip archives only; use -zip <path>.\n"
                .into(),
        );
    }
    let Some(target) = parameter(args, "zip", false) else {
        return (1, usage.into(), String::new());
    };
    let Some(path) = WinPath::parse(target).filter(|p| !p.parts.is_empty()) else {
        return (
            1,
            String::new(),
            format!("MdmDiagnosticsTool: the path '{target}' is not a valid file name.\n"),
        );
    };
    let local = path.local(files_dir);
    match write_diagnostics_zip(s, &areas, &local) {
        Ok(()) => (
            0,
            format!(
                "Collecting diagnostic data for area(s): {}\nDiagnostic data written to {}\n",
                areas.join(";"),
                path.display()
            ),
            String::new(),
        ),
        Err(e) => (
            1,
            String::new(),
            format!(
                "MdmDiagnosticsTool: could not write {}: {e}\n",
                path.display()
            ),
        ),
    }
}

/// The files `mdmdiagnosticstool -zip` puts in its archive, by name.
pub fn diagnostics_files(s: &WindowsSnapshot, areas: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        (
            "MDMDiagReport.xml".to_string(),
            diag_xml(s, areas).into_bytes(),
        ),
        (
            "MDMDiagHtmlReport.html".to_string(),
            diag_html(s).into_bytes(),
        ),
        (
            "MdmDiagReport_RegistryDump.reg".to_string(),
            registry_dump(s).into_bytes(),
        ),
    ];
    for channel in CHANNELS {
        // Windows names exported logs after the channel with `/` made `-`.
        let name = format!("{}.evtx", channel.replace(['/', ' '], "-"));
        files.push((name, evtx_placeholder(s, channel).into_bytes()));
    }
    if areas.iter().any(|a| a.eq_ignore_ascii_case("TPM")) {
        files.push(("TpmHliInfo_Output.txt".to_string(), get_tpm(s).into_bytes()));
    }
    if areas.iter().any(|a| a.eq_ignore_ascii_case("Autopilot")) {
        files.push((
            "IntuneManagementExtension.log".to_string(),
            ime_log(s).into_bytes(),
        ));
    }
    files
}

fn write_diagnostics_zip(s: &WindowsSnapshot, areas: &[&str], local: &Path) -> std::io::Result<()> {
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(local)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in diagnostics_files(s, areas) {
        zip.start_file(name, options)
            .map_err(std::io::Error::other)?;
        zip.write_all(&bytes)?;
    }
    zip.finish().map_err(std::io::Error::other)?;
    Ok(())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn diag_xml(s: &WindowsSnapshot, areas: &[&str]) -> String {
    let e = |t: &str| xml_escape(t);
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<MDMEnterpriseDiagnosticsReport>\n",
    );
    let _ = writeln!(xml, "  <Areas>{}</Areas>", e(&areas.join(";")));
    let _ = writeln!(
        xml,
        "  <DeviceVariables><DeviceName>{}</DeviceName><SerialNumber>{}</SerialNumber><OSVersion>10.0.{}</OSVersion><Edition>{}</Edition></DeviceVariables>",
        e(&s.computer_name()),
        e(&s.serial),
        e(&s.build),
        e(&s.edition)
    );
    let _ = writeln!(
        xml,
        "  <Enrollment><AzureAdJoined>{}</AzureAdJoined><DomainJoined>{}</DomainJoined><TenantId>{}</TenantId><ZtdId>{}</ZtdId><ProfileName>{}</ProfileName><EspPhase>{}</EspPhase></Enrollment>",
        yes_no(s.azure_ad_joined),
        yes_no(s.domain_joined),
        e(s.tenant_id.as_deref().unwrap_or("")),
        e(s.ztd_id.as_deref().unwrap_or("")),
        e(s.profile_name.as_deref().unwrap_or("")),
        e(&s.esp_phase)
    );
    let _ = writeln!(
        xml,
        "  <Tpm><Present>{}</Present><Ready>{}</Ready><ManufacturerIdTxt>{}</ManufacturerIdTxt><ManufacturerVersion>{}</ManufacturerVersion></Tpm>",
        true_false(s.tpm.present),
        true_false(s.tpm.ready),
        e(&s.tpm.manufacturer_id_txt),
        e(&s.tpm.manufacturer_version)
    );
    match &s.last_error {
        Some(err) => {
            let _ = writeln!(xml, "  <Errors><Error>{}</Error></Errors>", e(err));
        }
        None => xml.push_str("  <Errors />\n"),
    }
    xml.push_str("  <Events>\n");
    for ev in &s.events {
        let _ = writeln!(
            xml,
            "    <Event Id=\"{}\" Channel=\"{}\" Level=\"{}\" TimeCreated=\"{}\">{}</Event>",
            ev.id,
            e(&ev.channel),
            event_level(ev),
            e(&time_text(ev.at)),
            e(&ev.message)
        );
    }
    xml.push_str("  </Events>\n</MDMEnterpriseDiagnosticsReport>\n");
    xml
}

fn diag_html(s: &WindowsSnapshot) -> String {
    let e = |t: &str| xml_escape(t);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><title>MDM Diagnostic Report</title></head><body>\n<h1>MDM Diagnostic Report: {}</h1>\n<table>\n",
        e(&s.computer_name())
    );
    for (name, value) in [
        ("Serial number", s.serial.clone()),
        ("Azure AD joined", yes_no(s.azure_ad_joined).to_string()),
        ("Domain joined", yes_no(s.domain_joined).to_string()),
        ("Tenant", s.tenant_id.clone().unwrap_or_default()),
        (
            "Autopilot profile",
            s.profile_name.clone().unwrap_or_default(),
        ),
        ("ESP phase", s.esp_phase.clone()),
        ("Last error", s.last_error.clone().unwrap_or_default()),
    ] {
        let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", e(name), e(&value));
    }
    html.push_str("</table>\n<h2>Events</h2>\n<ul>\n");
    for ev in &s.events {
        let _ = writeln!(
            html,
            "<li>{} {} [{}] {}</li>",
            e(&time_text(ev.at)),
            ev.id,
            e(&ev.channel),
            e(&ev.message)
        );
    }
    html.push_str("</ul>\n</body></html>\n");
    html
}

fn registry_dump(s: &WindowsSnapshot) -> String {
    let mut reg = String::from("Windows Registry Editor Version 5.00\n");
    for key in registry(s) {
        let _ = write!(reg, "\n[{}]\n", key.path);
        for (name, value) in &key.values {
            match value {
                RegValue::Sz(text) => {
                    let text = text.replace('\\', "\\\\").replace('"', "\\\"");
                    let _ = writeln!(reg, "\"{name}\"=\"{text}\"");
                }
                RegValue::Dword(d) => {
                    let _ = writeln!(reg, "\"{name}\"=dword:{d:08x}");
                }
            }
        }
    }
    reg
}

/// Stands in for a binary .evtx export: the channel's events as the XML `wevtutil qe /f:xml`
/// prints. Named and placed as Windows does; the lab does not write the binary format.
fn evtx_placeholder(s: &WindowsSnapshot, channel: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Events>\n");
    for ev in channel_events(s, channel) {
        let _ = writeln!(
            xml,
            "<Event><System><Provider Name=\"{}\"/><EventID>{}</EventID><Level>{}</Level><TimeCreated SystemTime=\"{}\"/><Channel>{}</Channel><Computer>{}</Computer></System><RenderingInfo><Message>{}</Message></RenderingInfo></Event>",
            xml_escape(provider_of(channel)),
            ev.id,
            event_level(ev),
            xml_escape(&time_text(ev.at)),
            xml_escape(channel),
            xml_escape(&s.computer_name()),
            xml_escape(&ev.message)
        );
    }
    xml.push_str("</Events>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::snapshot::TpmSnapshot;
    use std::time::Duration;

    fn device() -> WindowsSnapshot {
        WindowsSnapshot {
            device_id: "pc01".into(),
            serial: "5CG1234AB1".into(),
            powered: true,
            booted: true,
            edition: "enterprise".into(),
            version: 11,
            build: "22631".into(),
            esp_phase: "oobe".into(),
            now: Duration::from_secs(1_795_000_000),
            tpm: TpmSnapshot {
                present: true,
                ready: true,
                enabled: true,
                activated: true,
                owned: true,
                manufacturer_id_txt: "NTC".into(),
                manufacturer_version: "7.2.3.1".into(),
                family: "2.0".into(),
                locked_out: false,
            },
            ..Default::default()
        }
    }

    fn entra(mut s: WindowsSnapshot) -> WindowsSnapshot {
        s.join = Some(JoinKind::Entra);
        s.azure_ad_joined = true;
        s.tenant_id = Some("6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11".into());
        s.tenant_domain = Some("contoso.onmicrosoft.com".into());
        s.profile_name = Some("Contoso Pre-provisioning".into());
        s.ztd_id = Some("ztd-1".into());
        s.esp_phase = "complete".into();
        s
    }

    fn run(s: &WindowsSnapshot, line: &str) -> (i32, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (code, out, err) = run_command(s, line, dir.path());
        (code, out.replace("\r\n", "\n"), err.replace("\r\n", "\n"))
    }

    #[test]
    fn powershell_quoting_keeps_arguments_whole() {
        let words = split_command_line(r#"& 'dsregcmd' '/sta''tus' "a `"b" c|fl"#).unwrap();
        assert_eq!(
            words,
            vec![
                Word::Text("&".into()),
                Word::Text("dsregcmd".into()),
                Word::Text("/sta'tus".into()),
                Word::Text("a \"b".into()),
                Word::Text("c".into()),
                Word::Pipe,
                Word::Text("fl".into()),
            ]
        );
        assert!(split_command_line("'open").is_err());
    }

    #[test]
    fn dsregcmd_reports_each_join_state() {
        let (code, out, _) = run(&entra(device()), "dsregcmd /status");
        assert_eq!(code, 0);
        assert!(out.contains("             AzureAdJoined : YES\n"), "{out}");
        assert!(out.contains("              DomainJoined : NO\n"));
        assert!(
            out.contains(
                "| Device State                                                         |"
            )
        );
        assert!(
            out.contains("                  TenantId : 6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11\n")
        );
        assert!(out.contains("              TpmProtected : YES\n"));
        assert!(out.contains(&format!("                    MdmUrl : {MDM_URL}\n")));

        let mut hybrid = entra(device());
        hybrid.join = Some(JoinKind::Hybrid);
        hybrid.domain_joined = true;
        let (_, out, _) = run(&hybrid, "& 'dsregcmd' '/status'");
        assert!(out.contains("             AzureAdJoined : YES\n"));
        assert!(out.contains("              DomainJoined : YES\n"));
        assert!(out.contains("                DomainName : CONTOSO\n"));

        let (_, out, _) = run(&device(), "dsregcmd.exe /status");
        assert!(out.contains("             AzureAdJoined : NO\n"));
        assert!(!out.contains("DeviceId"));
    }

    #[test]
    fn get_tpm_shows_the_expected_tpm() {
        let (code, out, _) = run(&device(), "Get-Tpm | Format-List");
        assert_eq!(code, 0);
        assert!(out.contains("ManufacturerIdTxt         : NTC\n"), "{out}");
        assert!(out.contains("ManufacturerId            : 1314145024\n"));
        assert!(out.contains("ManufacturerVersionFull20 : 7.2.3.1\n"));
        assert!(out.contains("TpmReady                  : True\n"));
    }

    #[test]
    fn registry_answers_autopilot_keys() {
        let (code, out, _) = run(
            &entra(device()),
            r"reg query 'HKLM\SOFTWARE\Microsoft\Provisioning\Diagnostics\Autopilot'",
        );
        assert_eq!(code, 0);
        assert!(
            out.contains("    TenantMatched    REG_DWORD    0x1\n"),
            "{out}"
        );
        assert!(out.contains("    DeploymentProfileName    REG_SZ    Contoso Pre-provisioning\n"));
        assert!(out.contains(r"Autopilot\EstablishedCorrelations"));
        let (code, out, _) = run(
            &entra(device()),
            r"reg query HKLM\SOFTWARE\Microsoft\Windows\Autopilot\EnrollmentStatusTracking\ESPTrackingInfo\Diagnostics /s",
        );
        assert_eq!(code, 0);
        assert!(out.contains("REG_DWORD    0x3"), "{out}");
        let (code, _, err) = run(&device(), r"reg query HKLM\SOFTWARE\Nope");
        assert_eq!(code, 1);
        assert!(err.contains("unable to find"));
        let (code, out, _) = run(
            &entra(device()),
            r"Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Provisioning\Diagnostics\Autopilot' -Name TenantMatched",
        );
        assert_eq!(code, 0);
        assert!(out.contains("TenantMatched"), "{out}");
    }

    #[test]
    fn events_come_newest_first_per_channel() {
        let mut s = device();
        let channel = CHANNELS[0].to_string();
        for (id, secs) in [(100, 10), (153, 20), (161, 30)] {
            s.events.push(WinEvent {
                id,
                channel: channel.clone(),
                message: format!("event {id}"),
                at: Duration::from_secs(1_795_000_000 + secs),
            });
        }
        let (code, out, _) = run(
            &s,
            &format!("Get-WinEvent -LogName '{channel}' -MaxEvents 2"),
        );
        assert_eq!(code, 0);
        let first = out.find("event 161").unwrap();
        let second = out.find("event 153").unwrap();
        assert!(first < second);
        assert!(!out.contains("event 100"));
        assert!(
            out.contains("ProviderName: Microsoft-Windows-ModernDeployment-Diagnostics-Provider")
        );
        let (code, _, err) = run(&s, &format!("Get-WinEvent -LogName '{}'", CHANNELS[2]));
        assert_eq!(code, 1);
        assert!(err.contains("No events were found"));
    }

    #[test]
    fn diagnostics_zip_is_real_and_stays_in_files_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = entra(device());
        s.last_error = Some("0x800705B4".into());
        let (code, out, err) = run_command(
            &s,
            r#"mdmdiagnosticstool.exe -area "DeviceEnrollment;DeviceProvisioning;Autopilot;TPM" -zip 'C:\Users\labadmin\..\..\..\..\diag.zip'"#,
            dir.path(),
        );
        assert_eq!(code, 0, "{out}{err}");
        let zip_path = dir.path().join("C").join("diag.zip");
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
        let names: Vec<String> = archive.file_names().map(str::to_string).collect();
        for wanted in [
            "MDMDiagReport.xml",
            "MDMDiagHtmlReport.html",
            "MdmDiagReport_RegistryDump.reg",
            "Microsoft-Windows-ModernDeployment-Diagnostics-Provider-Autopilot.evtx",
        ] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
        }
        let mut xml = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("MDMDiagReport.xml").unwrap(), &mut xml)
            .unwrap();
        assert!(xml.contains("<Error>0x800705B4</Error>"));
    }

    #[test]
    fn ime_log_shows_not_computed() {
        let mut s = entra(device());
        s.technician_completed_at = Some(Duration::from_secs(1_780_000_000));
        s.last_error = Some("NotComputed".into());
        let (code, out, _) = run(
            &s,
            r"Get-Content 'C:\ProgramData\Microsoft\IntuneManagementExtension\Logs\IntuneManagementExtension.log'",
        );
        assert_eq!(code, 0);
        assert!(
            out.contains("resulted in action status: Failed and detection state: NotComputed"),
            "{out}"
        );
    }

    #[test]
    fn unknown_commands_and_odd_input_fail_like_powershell() {
        let (code, _, err) = run(&device(), "Format-Disk C:");
        assert_eq!(code, 1);
        assert!(err.starts_with("Format-Disk : The term 'Format-Disk' is not recognized"));
        for line in [
            "",
            "|",
            "'",
            "\"`",
            "& ",
            "reg",
            "reg query",
            "Get-WinEvent -MaxEvents x",
            "dsregcmd | rm",
            "\u{0}\u{ffff}",
        ] {
            let _ = run(&device(), line);
        }
    }

    #[test]
    fn no_input_makes_a_command_panic() {
        // Every pairing of command names and awkward arguments, in a deterministic sweep.
        let programs = [
            "dsregcmd",
            "Get-Tpm",
            "reg",
            "Get-ItemProperty",
            "Get-WinEvent",
            "mdmdiagnosticstool.exe",
            "Get-Service",
            "Get-Content",
            "Test-Path",
            "Remove-Item",
            "hostname",
            "&",
            "|",
            "",
        ];
        let args = [
            "",
            "/status",
            "query",
            r"HKLM\",
            "HKLM:",
            "-Path",
            "-Name",
            "/v",
            "/s",
            "-LogName",
            "-MaxEvents",
            "0",
            "-1",
            "99999999999999999999",
            "-area",
            "TPM;;",
            "-zip",
            "-cab",
            r"C:\",
            r"\\?\C:\x",
            "..",
            "C:",
            "'",
            "''",
            "\"`",
            "`",
            "|",
            "fl",
            "\u{0}",
            "\u{202e}",
            "ü",
            "-Path:",
            "x:y:z",
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut s = entra(device());
        s.events.push(WinEvent {
            id: 0,
            channel: CHANNELS[0].into(),
            message: "\u{0}<&>".into(),
            at: Duration::MAX,
        });
        s.technician_completed_at = Some(Duration::MAX);
        for program in programs {
            for a in args {
                for b in args {
                    let line = format!("{program} {a} {b}");
                    for snapshot in [&s, &device()] {
                        let (code, out, err) = run_command(snapshot, &line, dir.path());
                        assert!(code == 0 || code == 1, "{line}: exit {code}");
                        for text in [out, err] {
                            assert!(!text.replace("\r\n", "").contains('\n'), "{line}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn paths_never_leave_files_dir() {
        let files = Path::new("/lab/files");
        for (raw, local) in [
            (
                r"C:\Users\labadmin\diag.zip",
                "/lab/files/C/Users/labadmin/diag.zip",
            ),
            (
                "/C:/Users/labadmin/diag.zip",
                "/lab/files/C/Users/labadmin/diag.zip",
            ),
            ("diag.zip", "/lab/files/C/Users/labadmin/diag.zip"),
            (r"..\..\..\..\..\etc\passwd", "/lab/files/C/etc/passwd"),
            ("/../../etc/passwd", "/lab/files/C/etc/passwd"),
            ("d:/x", "/lab/files/D/x"),
            ("/C:/Users/labadmin/C:/x", "/lab/files/C/x"),
        ] {
            assert_eq!(
                WinPath::parse(raw).unwrap().local(files),
                Path::new(local),
                "{raw}"
            );
        }
        assert!(WinPath::parse(r"C:\a\b:stream").is_none());
    }
}
