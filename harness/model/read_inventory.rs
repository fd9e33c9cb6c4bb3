//! The lab inventory, read from its node tree into [`Inventory`]: device templates
//! (`extends`) merged first, then every device checked as a whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::inventory::*;
use super::node::Node;
use super::problems::{Problems, did_you_mean};
use super::read::{Fields, boolean, duration, list, number, one_of, string, string_map, word};

const TOP_KEYS: &[&str] = &["lab", "tenants", "templates", "devices"];
const LAB_KEYS: &[&str] = &["name", "ledger", "reports", "virtual"];
const VIRTUAL_KEYS: &[&str] = &["time_scale", "state_dir", "control", "tenant", "tpm_ca"];
const TENANT_KEYS: &[&str] = &[
    "tenant_id",
    "client_id",
    "client_secret",
    "certificate",
    "graph_url",
    "login_url",
    "organization",
    "profile",
    "users",
];
const USER_KEYS: &[&str] = &["upn", "password", "ad_account", "ad_password"];
pub const DEVICE_KEYS: &[&str] = &[
    "id",
    "extends",
    "serial",
    "manufacturer",
    "model",
    "windows",
    "tpm",
    "tags",
    "power",
    "console",
    "keyboard",
    "screen",
    "shell",
    "tpm_access",
    "tenant",
    "health_scenario",
    "sim",
];
const SIM_KEYS: &[&str] = &[
    "profile",
    "domain_reachable",
    "esp_disabled",
    "allow_preprovisioning",
    "registered",
    "wlidsvc_disabled",
    "faults",
];
pub const FAULT_KINDS: &[&str] = &[
    "attestation",
    "slow_esp",
    "serial_drop",
    "ssh_refused_during_reboot",
    "power_fails",
    "clock_skew",
    "graph_throttle",
];

/// Paths in the inventory are relative to the inventory file's directory.
struct Reader<'a> {
    base: &'a Path,
    p: &'a mut Problems,
}

pub fn read(root: &Node, source: &Path, p: &mut Problems) -> Option<Inventory> {
    let parent = source.parent().unwrap_or(Path::new(""));
    // Made absolute once, so paths stay right whatever directory a later layer runs in.
    let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let mut r = Reader { base: &base, p };
    let top = Fields::of(root, TOP_KEYS, "the inventory", r.p)?;
    let lab = top.req("lab", "the inventory", r.p).and_then(|n| r.lab(n));
    let tenants = match top.get("tenants") {
        Some(n) => r.tenants(n),
        None => BTreeMap::new(),
    };
    let templates: Vec<(String, &Node)> = match top.get("templates") {
        Some(n) => r.templates(n),
        None => Vec::new(),
    };
    let mut devices = Vec::new();
    if let Some(list_node) = top.req("devices", "the inventory", r.p)
        && let Some(items) = list(list_node, "devices", r.p)
    {
        let mut ids: HashMap<String, &Node> = HashMap::new();
        let mut serials: HashMap<String, &Node> = HashMap::new();
        for item in items {
            let Some(merged) = r.extend(item, &templates, &mut Vec::new()) else {
                continue;
            };
            if let Some(device) = r.device(&merged, &tenants) {
                if let Some(first) = ids.get(&device.id) {
                    let line = first.span.line;
                    r.p.error(
                        &item.span,
                        format!("device id `{}` is used twice", device.id),
                    )
                    .hint(format!(
                        "the first one is on line {line}; ids must be unique"
                    ));
                } else {
                    ids.insert(device.id.clone(), item);
                }
                if let Some(first) = serials.get(&device.serial) {
                    let line = first.span.line;
                    r.p.error(
                        &item.span,
                        format!("serial number `{}` is used twice", device.serial),
                    )
                    .hint(format!(
                        "the first one is on line {line}; each device has its own serial"
                    ));
                } else {
                    serials.insert(device.serial.clone(), item);
                }
                devices.push(device);
            }
        }
    }
    Some(Inventory {
        source: source.to_path_buf(),
        lab: lab?,
        tenants,
        devices,
    })
}

/// Merges `over` onto `under`: maps key by key (recursively), anything else replaced.
fn merge(under: &Node, over: &Node) -> Node {
    match (under.as_map(), over.as_map()) {
        (Some(u), Some(o)) => {
            let mut entries: Vec<(Node, Node)> = Vec::new();
            for (k, v) in u {
                match o
                    .iter()
                    .find(|(ok, _)| ok.as_str().is_some() && ok.as_str() == k.as_str())
                {
                    Some((ok, ov)) => entries.push((ok.clone(), merge(v, ov))),
                    None => entries.push((k.clone(), v.clone())),
                }
            }
            for (k, v) in o {
                if !u
                    .iter()
                    .any(|(uk, _)| uk.as_str().is_some() && uk.as_str() == k.as_str())
                {
                    entries.push((k.clone(), v.clone()));
                }
            }
            Node::map(over.span.clone(), entries)
        }
        _ => over.clone(),
    }
}

impl Reader<'_> {
    fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let text = string(node, what, self.p)?;
        if text.trim().is_empty() {
            self.p
                .error(&node.span, format!("`{what}` is an empty path"));
            return None;
        }
        Some(self.base.join(text))
    }

    fn endpoint(&mut self, node: &Node, what: &str) -> Option<Endpoint> {
        let text = string(node, what, self.p)?;
        match text
            .rsplit_once(':')
            .map(|(h, port)| (h, port.parse::<u16>()))
        {
            Some((host, Ok(port))) if !host.is_empty() && port != 0 => Some(Endpoint {
                host: host.to_string(),
                port,
            }),
            _ => {
                self.p
                    .error(
                        &node.span,
                        format!("`{what}` must be `host:port`, found `{text}`"),
                    )
                    .hint("e.g. `127.0.0.1:17099`");
                None
            }
        }
    }

    fn url(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = string(node, what, self.p)?;
        if text.starts_with("http://") || text.starts_with("https://") {
            Some(text.trim_end_matches('/').to_string())
        } else {
            self.p.error(
                &node.span,
                format!("`{what}` must be an http:// or https:// URL, found `{text}`"),
            );
            None
        }
    }

    /// `{ env: NAME }` or `{ file: path }`; an inline string is refused.
    fn secret(&mut self, node: &Node, what: &str) -> Option<SecretRef> {
        if node.as_str().is_some() {
            self.p
                .error(&node.span, format!("`{what}` is a secret written inline"))
                .hint("give secrets by reference: `{ env: NAME }` or `{ file: path }`, never in the file");
            return None;
        }
        let (kind, value) = one_of(
            node,
            &format!("the secret `{what}`"),
            &["env", "file"],
            self.p,
        )?;
        match kind {
            "env" => string(value, "env", self.p).map(SecretRef::Env),
            _ => {
                // Relative to the inventory's directory, like every other path in it.
                let text = string(value, "file", self.p)?;
                Some(SecretRef::File(self.base.join(text)))
            }
        }
    }

    fn lab(&mut self, node: &Node) -> Option<Lab> {
        let f = Fields::of(node, LAB_KEYS, "the `lab:` settings", self.p)?;
        let name = f.req_str("name", "`lab:`", self.p);
        let ledger = f
            .req("ledger", "`lab:`", self.p)
            .and_then(|n| self.path(n, "ledger"));
        let reports = match f.get("reports") {
            Some(n) => self.path(n, "reports"),
            None => Some(self.base.join("reports")),
        };
        let virtual_lab = match f.get("virtual") {
            Some(n) => Some(self.virtual_lab(n)?),
            None => None,
        };
        Some(Lab {
            name: name?,
            ledger: ledger?,
            reports: reports?,
            virtual_lab,
        })
    }

    fn virtual_lab(&mut self, node: &Node) -> Option<VirtualLab> {
        let f = Fields::of(node, VIRTUAL_KEYS, "the `virtual:` settings", self.p)?;
        let time_scale = match f.get("time_scale") {
            Some(n) => match n.as_str().and_then(|s| s.parse::<f64>().ok()) {
                Some(x) if x.is_finite() && x > 0.0 && x <= 1_000_000.0 => Some(x),
                _ => {
                    self.p
                        .error(
                            &n.span,
                            format!(
                                "`time_scale` must be a number above 0, found {}",
                                n.describe()
                            ),
                        )
                        .hint("1 runs in real time; 600 makes 90 minutes pass in 9 seconds");
                    None
                }
            },
            None => Some(1.0),
        };
        let state_dir = f
            .req("state_dir", "`virtual:`", self.p)
            .and_then(|n| self.path(n, "state_dir"));
        let control = f.get("control").map(|n| self.endpoint(n, "control"));
        let tenant = f.get("tenant").map(|n| self.endpoint(n, "tenant"));
        let tpm_ca_dir = f.get("tpm_ca").map(|n| self.path(n, "tpm_ca"));
        Some(VirtualLab {
            time_scale: time_scale?,
            state_dir: state_dir?,
            control: control.map_or(Some(None), |e| e.map(Some))?,
            tenant: tenant.map_or(Some(None), |e| e.map(Some))?,
            tpm_ca_dir: tpm_ca_dir.map_or(Some(None), |e| e.map(Some))?,
        })
    }

    fn tenants(&mut self, node: &Node) -> BTreeMap<String, TenantConfig> {
        let mut out = BTreeMap::new();
        let Some(entries) = node.as_map() else {
            self.p.error(
                &node.span,
                format!(
                    "`tenants` must be a map of tenant names, found {}",
                    node.describe()
                ),
            );
            return out;
        };
        for (k, v) in entries {
            let Some(name) = string(k, "tenant name", self.p) else {
                continue;
            };
            if let Some(t) = self.tenant(&name, v) {
                out.insert(name, t);
            }
        }
        out
    }

    fn tenant(&mut self, name: &str, node: &Node) -> Option<TenantConfig> {
        let what = format!("tenant `{name}`");
        let f = Fields::of(node, TENANT_KEYS, &what, self.p)?;
        let tenant_id = f.req_str("tenant_id", &what, self.p);
        let client_id = f.req_str("client_id", &what, self.p);
        let credential = match (f.get("client_secret"), f.get("certificate")) {
            (Some(s), None) => self
                .secret(s, "client_secret")
                .map(Credential::ClientSecret),
            (None, Some(c)) => {
                let cf = Fields::of(c, &["path", "key"], "a tenant certificate", self.p)?;
                let path = cf
                    .req("path", "`certificate:`", self.p)
                    .and_then(|n| self.path(n, "path"));
                let key = cf
                    .req("key", "`certificate:`", self.p)
                    .and_then(|n| self.secret(n, "key"));
                match (path, key) {
                    (Some(certificate), Some(key)) => {
                        Some(Credential::Certificate { certificate, key })
                    }
                    _ => None,
                }
            }
            (Some(_), Some(c)) => {
                self.p
                    .error(
                        &c.span,
                        format!("{what} has both `client_secret` and `certificate`"),
                    )
                    .hint("keep one credential");
                None
            }
            (None, None) => {
                self.p
                    .error(&node.span, format!("{what} has no credential"))
                    .hint("add `client_secret: { env: NAME }` or `certificate: { path: ..., key: { file: ... } }`");
                None
            }
        };
        let graph_url = match f.get("graph_url") {
            Some(n) => self.url(n, "graph_url"),
            None => Some("https://graph.microsoft.com".to_string()),
        };
        let login_url = match f.get("login_url") {
            Some(n) => self.url(n, "login_url"),
            None => Some("https://login.microsoftonline.com".to_string()),
        };
        let mut users = BTreeMap::new();
        if let Some(u) = f.get("users") {
            match u.as_map() {
                Some(entries) => {
                    for (k, v) in entries {
                        let Some(user_name) = string(k, "user name", self.p) else {
                            continue;
                        };
                        if let Some(user) = self.user(&user_name, v) {
                            users.insert(user_name, user);
                        }
                    }
                }
                None => {
                    self.p.error(
                        &u.span,
                        "`users` must be a map of user names (e.g. `default:`)",
                    );
                }
            }
        }
        Some(TenantConfig {
            name: name.to_string(),
            tenant_id: tenant_id?,
            client_id: client_id?,
            credential: credential?,
            graph_url: graph_url?,
            login_url: login_url?,
            users,
            organization: f.str("organization", self.p),
            profile: f.str("profile", self.p),
        })
    }

    fn user(&mut self, name: &str, node: &Node) -> Option<TenantUser> {
        let what = format!("user `{name}`");
        let f = Fields::of(node, USER_KEYS, &what, self.p)?;
        let upn = f.req_str("upn", &what, self.p);
        if let (Some(u), Some(n)) = (&upn, f.get("upn"))
            && !u.contains('@')
        {
            self.p.error(
                &n.span,
                format!("`upn` must look like user@domain, found `{u}`"),
            );
        }
        let password = f.get("password").map(|n| self.secret(n, "password"));
        let ad_password = f.get("ad_password").map(|n| self.secret(n, "ad_password"));
        Some(TenantUser {
            upn: upn?,
            password: password.map_or(Some(None), |s| s.map(Some))?,
            ad_account: f.str("ad_account", self.p),
            ad_password: ad_password.map_or(Some(None), |s| s.map(Some))?,
        })
    }

    fn templates<'n>(&mut self, node: &'n Node) -> Vec<(String, &'n Node)> {
        let Some(entries) = node.as_map() else {
            self.p.error(
                &node.span,
                format!(
                    "`templates` must be a map of template names, found {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            if let Some(name) = string(k, "template name", self.p) {
                // Keys are checked once, here, so a typo in a template is reported once.
                if Fields::of(v, DEVICE_KEYS, &format!("template `{name}`"), self.p).is_some() {
                    out.push((name, v));
                }
            }
        }
        out
    }

    /// The device (or template) with everything it `extends` merged under it.
    fn extend(
        &mut self,
        node: &Node,
        templates: &[(String, &Node)],
        chain: &mut Vec<String>,
    ) -> Option<Node> {
        let Some(ext) = node.get("extends").filter(|n| !n.is_null()) else {
            return Some(node.clone());
        };
        let name = string(ext, "extends", self.p)?;
        if chain.contains(&name) {
            self.p
                .error(
                    &ext.span,
                    format!(
                        "template `{name}` extends itself (through {})",
                        chain.join(" -> ")
                    ),
                )
                .hint("remove one `extends:` from the loop");
            return None;
        }
        let Some((_, base)) = templates.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = templates.iter().map(|(n, _)| n.as_str()).collect();
            let problem = self
                .p
                .error(&ext.span, format!("no template named `{name}`"));
            match did_you_mean(&name, &names) {
                Some(close) => problem.hint(format!("did you mean `{close}`?")),
                None if names.is_empty() => {
                    problem.hint("no templates are defined; add them under `templates:`")
                }
                None => problem.hint(format!(
                    "templates defined under `templates:`: {}",
                    names.join(", ")
                )),
            };
            return None;
        };
        chain.push(name);
        let base = self.extend(base, templates, chain)?;
        // Unknown keys of a template were reported with the template; keep them out of
        // the device so they are not reported again for every device using it.
        let known: Vec<(Node, Node)> = base
            .as_map()
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| k.as_str().is_some_and(|k| DEVICE_KEYS.contains(&k)))
            .cloned()
            .collect();
        let base = Node::map(base.span.clone(), known);
        // `extends` itself is not inherited: drop it from the merge result.
        let merged = merge(&base, node);
        let entries: Vec<(Node, Node)> = merged
            .as_map()
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| k.as_str() != Some("extends"))
            .cloned()
            .collect();
        Some(Node::map(node.span.clone(), entries))
    }

    fn device(&mut self, node: &Node, tenants: &BTreeMap<String, TenantConfig>) -> Option<Device> {
        let f = Fields::of(node, DEVICE_KEYS, "a device", self.p)?;
        let id = f.req_str("id", "this device", self.p);
        let what = match &id {
            Some(id) => format!("device `{id}`"),
            None => "this device".to_string(),
        };
        if let (Some(id), Some(n)) = (&id, f.get("id"))
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            self.p
                .error(
                    &n.span,
                    format!("device id `{id}` may only hold letters, digits, `-` and `_`"),
                )
                .hint("ids name run directories and ledger rows");
        }
        let serial = f.req_str("serial", &what, self.p);
        let manufacturer = f.req_str("manufacturer", &what, self.p);
        let model = f.req_str("model", &what, self.p);
        let windows = f
            .req("windows", &what, self.p)
            .and_then(|n| self.windows(n));
        let tpm = f.get("tpm").map(|n| self.expected_tpm(n));
        let tags = f.get("tags").map(|n| string_map(n, "tags", self.p));
        let power = f.get("power").map(|n| self.power(n));
        let console = f.get("console").map(|n| self.console(n));
        let keyboard = f.get("keyboard").map(|n| self.keyboard(n));
        let screen = f.get("screen").map(|n| {
            let (_, v) = one_of(n, "a screen connection", &["pikvm"], self.p)?;
            self.pikvm(v).map(ScreenConn::Pikvm)
        });
        let shell = f.get("shell").map(|n| self.shell(n));
        let tpm_access = f.get("tpm_access").map(|n| self.tpm_access(n));
        let tenant = f.get("tenant").and_then(|n| {
            let name = string(n, "tenant", self.p)?;
            if tenants.contains_key(&name) {
                return Some(name);
            }
            let names: Vec<&str> = tenants.keys().map(String::as_str).collect();
            let problem = self.p.error(&n.span, format!("no tenant named `{name}`"));
            match did_you_mean(&name, &names) {
                Some(close) => problem.hint(format!("did you mean `{close}`?")),
                None => problem.hint("define it under `tenants:`"),
            };
            None
        });
        if f.has("tenant") && tenant.is_none() {
            return None;
        }
        let sim = f.get("sim").map(|n| self.sim(n));
        Some(Device {
            id: id?,
            serial: serial?,
            manufacturer: manufacturer?,
            model: model?,
            windows: windows?,
            tpm: tpm.map_or(Some(None), |t| t.map(Some))?,
            tags: tags.map_or(Some(BTreeMap::new()), |t| t)?,
            power: power.map_or(Some(None), |t| t.map(Some))?,
            console: console.map_or(Some(None), |t| t.map(Some))?,
            keyboard: keyboard.map_or(Some(None), |t| t.map(Some))?,
            screen: screen.map_or(Some(None), |t| t.map(Some))?,
            shell: shell.map_or(Some(None), |t| t.map(Some))?,
            tpm_access: tpm_access.map_or(Some(None), |t| t.map(Some))?,
            tenant,
            health_scenario: f.str("health_scenario", self.p),
            sim: sim.map_or(Some(None), |t| t.map(Some))?,
        })
    }

    fn windows(&mut self, node: &Node) -> Option<Windows> {
        let f = Fields::of(node, &["edition", "version", "build"], "`windows:`", self.p)?;
        let names: Vec<&str> = Edition::ALL.iter().map(|e| e.as_str()).collect();
        let edition = f
            .req("edition", "`windows:`", self.p)
            .and_then(|n| word(n, "edition", &names, self.p))
            .and_then(Edition::from_name);
        let version = f
            .req("version", "`windows:`", self.p)
            .and_then(|n| match n.as_str() {
                Some("10") => Some(10),
                Some("11") => Some(11),
                _ => {
                    self.p
                        .error(
                            &n.span,
                            format!("`version` must be 10 or 11, found {}", n.describe()),
                        )
                        .hint("it decides the wording of the pre-provisioning screens");
                    None
                }
            });
        Some(Windows {
            edition: edition?,
            version: version?,
            build: f.str("build", self.p),
        })
    }

    fn expected_tpm(&mut self, node: &Node) -> Option<ExpectedTpm> {
        let f = Fields::of(
            node,
            &["family", "manufacturer", "firmware", "ek_ca"],
            "`tpm:`",
            self.p,
        )?;
        let family = f.req("family", "`tpm:`", self.p).and_then(|n| {
            let s = string(n, "family", self.p)?;
            if s == "2.0" || s == "1.2" {
                Some(s)
            } else {
                self.p
                    .error(
                        &n.span,
                        format!("TPM `family` must be \"2.0\" or \"1.2\", found `{s}`"),
                    )
                    .hint("quote it: `family: \"2.0\"`");
                None
            }
        });
        let manufacturer = f.req_str("manufacturer", "`tpm:`", self.p);
        let ek_ca_bundle = f.get("ek_ca").map(|n| self.path(n, "ek_ca"));
        Some(ExpectedTpm {
            family: family?,
            manufacturer: manufacturer?,
            firmware: f.str("firmware", self.p),
            ek_ca_bundle: ek_ca_bundle.map_or(Some(None), |p| p.map(Some))?,
        })
    }

    fn port<T: std::str::FromStr>(
        &mut self,
        f: &Fields,
        key: &str,
        default: Option<T>,
    ) -> Option<T> {
        match f.get(key) {
            Some(n) => number::<T>(n, key, "1 to 65535", self.p),
            None if default.is_some() => default,
            None => {
                self.p.error(&f.node.span, format!("missing `{key}:`"));
                None
            }
        }
    }

    fn pikvm(&mut self, node: &Node) -> Option<PikvmConn> {
        let f = Fields::of(
            node,
            &["url", "user", "password", "verify_tls"],
            "a PiKVM connection",
            self.p,
        )?;
        let url = f
            .req("url", "`pikvm:`", self.p)
            .and_then(|n| self.url(n, "url"));
        let user = f.str("user", self.p).unwrap_or_else(|| "admin".to_string());
        let password = f
            .req("password", "`pikvm:`", self.p)
            .and_then(|n| self.secret(n, "password"));
        Some(PikvmConn {
            url: url?,
            user,
            password: password?,
            verify_tls: f.bool("verify_tls", false, self.p),
        })
    }

    fn power(&mut self, node: &Node) -> Option<PowerConn> {
        let (kind, v) = one_of(
            node,
            "a power connection",
            &["redfish", "pdudaemon", "pikvm", "command"],
            self.p,
        )?;
        match kind {
            "redfish" => {
                let f = Fields::of(
                    v,
                    &["url", "system", "user", "password", "verify_tls"],
                    "`redfish:`",
                    self.p,
                )?;
                let url = f
                    .req("url", "`redfish:`", self.p)
                    .and_then(|n| self.url(n, "url"));
                let system = f.req_str("system", "`redfish:`", self.p);
                let password = f.get("password").map(|n| self.secret(n, "password"));
                Some(PowerConn::Redfish {
                    url: url?,
                    system: system?,
                    user: f.str("user", self.p),
                    password: password.map_or(Some(None), |s| s.map(Some))?,
                    verify_tls: f.bool("verify_tls", true, self.p),
                })
            }
            "pdudaemon" => {
                let f = Fields::of(v, &["url", "pdu", "port"], "`pdudaemon:`", self.p)?;
                let url = match f.get("url") {
                    Some(n) => self.url(n, "url"),
                    None => Some("http://127.0.0.1:16421".to_string()),
                };
                let pdu = f.req_str("pdu", "`pdudaemon:`", self.p);
                let port = f
                    .req("port", "`pdudaemon:`", self.p)
                    .and_then(|n| number::<u32>(n, "port", "the outlet number", self.p));
                Some(PowerConn::Pdudaemon {
                    url: url?,
                    pdu: pdu?,
                    port: port?,
                })
            }
            "pikvm" => self.pikvm(v).map(PowerConn::Pikvm),
            _ => {
                let f = Fields::of(v, &["on", "off", "cycle", "state"], "`command:`", self.p)?;
                let on = f.req_str("on", "`command:`", self.p);
                let off = f.req_str("off", "`command:`", self.p);
                Some(PowerConn::Command {
                    on: on?,
                    off: off?,
                    cycle: f.str("cycle", self.p),
                    state: f.str("state", self.p),
                })
            }
        }
    }

    fn console(&mut self, node: &Node) -> Option<ConsoleConn> {
        let (kind, v) = one_of(
            node,
            "a console connection",
            &["serial", "tcp", "rfc2217"],
            self.p,
        )?;
        match kind {
            "serial" => {
                let f = Fields::of(v, &["device", "baud"], "`serial:`", self.p)?;
                let device = f
                    .req("device", "`serial:`", self.p)
                    .and_then(|n| self.path(n, "device"));
                let baud = self.baud(&f, 115_200);
                Some(ConsoleConn::Serial {
                    device: device?,
                    baud: baud?,
                })
            }
            "tcp" => {
                let f = Fields::of(v, &["host", "port"], "`tcp:`", self.p)?;
                let host = f.req_str("host", "`tcp:`", self.p);
                let port = self.port::<u16>(&f, "port", None);
                Some(ConsoleConn::Tcp {
                    host: host?,
                    port: port?,
                })
            }
            _ => {
                let f = Fields::of(v, &["host", "port", "baud"], "`rfc2217:`", self.p)?;
                let host = f.req_str("host", "`rfc2217:`", self.p);
                let port = self.port::<u16>(&f, "port", None);
                let baud = self.baud(&f, 115_200);
                Some(ConsoleConn::Rfc2217 {
                    host: host?,
                    port: port?,
                    baud: baud?,
                })
            }
        }
    }

    fn baud(&mut self, f: &Fields, default: u32) -> Option<u32> {
        match f.get("baud") {
            None => Some(default),
            Some(n) => match number::<u32>(n, "baud", "e.g. 9600 or 115200", self.p) {
                Some(0) => {
                    self.p.error(&n.span, "`baud` cannot be 0");
                    None
                }
                other => other,
            },
        }
    }

    fn keyboard(&mut self, node: &Node) -> Option<KeyboardConn> {
        let (kind, v) = one_of(node, "a keyboard connection", &["ch9329", "pikvm"], self.p)?;
        if kind == "pikvm" {
            return self.pikvm(v).map(KeyboardConn::Pikvm);
        }
        let f = Fields::of(v, &["device", "baud", "address"], "`ch9329:`", self.p)?;
        let device = f
            .req("device", "`ch9329:`", self.p)
            .and_then(|n| self.path(n, "device"));
        let baud = self.baud(&f, 9600);
        let address = match f.get("address") {
            Some(n) => number::<u8>(n, "address", "0 to 255", self.p),
            None => Some(0),
        };
        Some(KeyboardConn::Ch9329 {
            device: device?,
            baud: baud?,
            address: address?,
        })
    }

    fn shell(&mut self, node: &Node) -> Option<ShellConn> {
        let (_, v) = one_of(node, "a shell connection", &["ssh"], self.p)?;
        let keys = [
            "host",
            "port",
            "user",
            "key_file",
            "known_hosts",
            "host_key_policy",
            "flavor",
        ];
        let f = Fields::of(v, &keys, "`ssh:`", self.p)?;
        let host = f.req_str("host", "`ssh:`", self.p);
        let port = self.port::<u16>(&f, "port", Some(22));
        let user = f.req_str("user", "`ssh:`", self.p);
        let key_file = f
            .req("key_file", "`ssh:`", self.p)
            .and_then(|n| self.path(n, "key_file"));
        let known_hosts = f
            .req("known_hosts", "`ssh:`", self.p)
            .and_then(|n| self.path(n, "known_hosts"));
        let host_key_policy = match f.get("host_key_policy") {
            Some(n) => match word(
                n,
                "host_key_policy",
                &["strict", "trust-on-first-use"],
                self.p,
            ) {
                Some("strict") => Some(HostKeyPolicy::Strict),
                Some(_) => Some(HostKeyPolicy::TrustOnFirstUse),
                None => None,
            },
            None => Some(HostKeyPolicy::Strict),
        };
        let flavor = match f.get("flavor") {
            Some(n) => match word(n, "flavor", &["powershell", "posix"], self.p) {
                Some("posix") => Some(ShellFlavor::Posix),
                Some(_) => Some(ShellFlavor::Powershell),
                None => None,
            },
            None => Some(ShellFlavor::Powershell),
        };
        Some(ShellConn {
            host: host?,
            port: port?,
            user: user?,
            key_file: key_file?,
            known_hosts: known_hosts?,
            host_key_policy: host_key_policy?,
            flavor: flavor?,
        })
    }

    fn tpm_access(&mut self, node: &Node) -> Option<TpmConn> {
        if node.as_str() == Some("shell") {
            return Some(TpmConn::Shell);
        }
        if node.as_str().is_some() {
            self.p.error(
                &node.span,
                format!(
                    "`tpm_access` must be `shell` or `{{ tcti: ... }}`, found {}",
                    node.describe()
                ),
            );
            return None;
        }
        let (_, v) = one_of(node, "a TPM connection", &["tcti"], self.p)?;
        let tcti = string(v, "tcti", self.p)?;
        if !tcti.contains(':') && !matches!(tcti.as_str(), "device" | "tabrmd" | "mssim" | "swtpm")
        {
            self.p
                .error(&v.span, format!("`{tcti}` is not a TCTI string"))
                .hint("e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`");
            return None;
        }
        Some(TpmConn::Tcti(tcti))
    }

    fn sim(&mut self, node: &Node) -> Option<SimDevice> {
        let f = Fields::of(node, SIM_KEYS, "the `sim:` block", self.p)?;
        let mut faults = Vec::new();
        if let Some(n) = f.get("faults")
            && let Some(items) = list(n, "faults", self.p)
        {
            for item in items {
                if let Some(fault) = self.fault(item) {
                    faults.push(fault);
                }
            }
        }
        Some(SimDevice {
            profile: f.str("profile", self.p),
            domain_reachable: f.bool("domain_reachable", false, self.p),
            esp_disabled: f.bool("esp_disabled", false, self.p),
            allow_preprovisioning: f.bool("allow_preprovisioning", true, self.p),
            registered: f.bool("registered", true, self.p),
            wlidsvc_disabled: f.bool("wlidsvc_disabled", false, self.p),
            faults,
        })
    }

    /// One fault: `{attestation: timeout}`, `{attestation: {intermittent: 2}}`,
    /// `{slow_esp: 3}`, `{serial_drop: {after: 10m, down: 30s}}`,
    /// `{ssh_refused_during_reboot: true}`, `{power_fails: 2}`, `{clock_skew: 2h}`,
    /// `{graph_throttle: 3}`.
    fn fault(&mut self, node: &Node) -> Option<Fault> {
        let (kind, v) = one_of(node, "a fault", FAULT_KINDS, self.p)?;
        let count = |r: &mut Self, v: &Node, what: &str| number::<u32>(v, what, "a count", r.p);
        match kind {
            "attestation" => {
                if v.as_str() == Some("timeout") {
                    return Some(Fault::AttestationTimeout);
                }
                if v.as_str().is_some() {
                    self.p
                        .error(&v.span, format!("`attestation` fault must be `timeout` or `{{intermittent: N}}`, found {}", v.describe()));
                    return None;
                }
                let (_, n) = one_of(v, "an attestation fault", &["intermittent"], self.p)?;
                count(self, n, "intermittent")
                    .map(|failures| Fault::AttestationIntermittent { failures })
            }
            "slow_esp" => match v.as_str().and_then(|s| s.parse::<f64>().ok()) {
                Some(factor) if factor.is_finite() && factor >= 1.0 => {
                    Some(Fault::SlowEsp { factor })
                }
                _ => {
                    self.p.error(
                        &v.span,
                        format!(
                            "`slow_esp` must be a factor of at least 1, found {}",
                            v.describe()
                        ),
                    );
                    None
                }
            },
            "serial_drop" => {
                let f = Fields::of(v, &["after", "down"], "`serial_drop`", self.p)?;
                let after = f
                    .req("after", "`serial_drop`", self.p)
                    .and_then(|n| duration(n, "after", self.p));
                let down = f
                    .req("down", "`serial_drop`", self.p)
                    .and_then(|n| duration(n, "down", self.p));
                Some(Fault::SerialDrop {
                    after: after?,
                    down: down?,
                })
            }
            "ssh_refused_during_reboot" => {
                if boolean(v, "ssh_refused_during_reboot", self.p)? {
                    Some(Fault::SshRefusedDuringReboot)
                } else {
                    None
                }
            }
            "power_fails" => count(self, v, "power_fails")
                .map(|requests| Fault::PowerControllerFails { requests }),
            "clock_skew" => {
                duration(v, "clock_skew", self.p).map(|skew: Duration| Fault::ClockSkew { skew })
            }
            _ => count(self, v, "graph_throttle").map(|requests| Fault::GraphThrottle { requests }),
        }
    }
}
