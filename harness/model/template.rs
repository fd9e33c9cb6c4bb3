//! Templates (tera) over `device`, `tenant`, `matrix` and `vars`, and the context a case
//! renders them in.
//!
//! Secrets never enter the context. A step that types a secret is written
//! `text: { secret: tenant.users.default.password }`; it becomes
//! `Action::Text { text: "{{ secret(name=\"tenant.users.default.password\") }}", secret: true }`.
//! The engine renders it with [`Template::render_with_secrets`], resolving each named
//! [`SecretRef`] only at that moment (see [`secret_ref`]), and knows from `secret: true`
//! to keep the typed value out of every log. [`Template::render`] refuses a template that
//! reads a secret, so a secret cannot leak into a log line through an ordinary render.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use tera::{Context, Tera, Value};

use super::inventory::{Device, Inventory, SecretRef, TenantConfig};
use super::scenario::{Case, Template};

static SECRET_CALL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"secret\(\s*name\s*=\s*(?:"([^"]*)"|'([^']*)')\s*\)"#).expect("static regex")
});

/// `{% word`: the statement a tag opens.
static STATEMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{%-?\s*([A-Za-z_]+)").expect("static regex"));
static RANGE_CALL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\brange\s*\(").expect("static regex"));
const ALLOWED_STATEMENTS: &[&str] = &[
    "if",
    "elif",
    "else",
    "endif",
    "set",
    "set_global",
    "raw",
    "endraw",
    "filter",
    "endfilter",
];

impl Template {
    /// The template for typing the secret `name`, e.g. `tenant.users.default.password`.
    pub fn secret(name: &str) -> Template {
        Template(format!("{{{{ secret(name=\"{name}\") }}}}"))
    }

    /// True when the text holds template syntax (plain text renders to itself).
    pub fn is_dynamic(&self) -> bool {
        self.0.contains("{{") || self.0.contains("{%") || self.0.contains("{#")
    }

    /// Names of the secrets this template reads through `secret(name=...)`.
    pub fn secret_names(&self) -> Vec<String> {
        SECRET_CALL
            .captures_iter(&self.0)
            .filter_map(|c| c.get(1).or(c.get(2)).map(|m| m.as_str().to_string()))
            .collect()
    }

    /// Renders without secrets: a template that calls `secret()` is an error.
    pub fn render(&self, ctx: &Context) -> Result<String, String> {
        self.render_with(ctx, HashMap::new())
    }

    /// Renders, resolving each `secret(name=...)` through `resolve` (called once per
    /// name, at render time; the values live only in this call).
    pub fn render_with_secrets(
        &self,
        ctx: &Context,
        resolve: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        let mut values = HashMap::new();
        for name in self.secret_names() {
            let value = resolve(&name)?;
            values.insert(name, value);
        }
        self.render_with(ctx, values)
    }

    fn render_with(
        &self,
        ctx: &Context,
        secrets: HashMap<String, String>,
    ) -> Result<String, String> {
        if !self.is_dynamic() {
            return Ok(self.0.clone());
        }
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        tera.register_function("secret", move |args: &HashMap<String, Value>| {
            let name = args
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| tera::Error::msg("secret() takes name=\"...\""))?;
            match secrets.get(name) {
                Some(v) => Ok(Value::String(v.clone())),
                None => Err(tera::Error::msg(format!(
                    "secret `{name}` is resolved only by the engine, when the step runs"
                ))),
            }
        });
        tera.add_raw_template("template", &self.0)
            .map_err(|e| error_chain(&e))?;
        tera.render("template", ctx).map_err(|e| error_chain(&e))
    }

    /// Checks the syntax only (no context needed).
    /// Also refuses loops, macros and `range()`: a template renders one value, and a
    /// loop or a recursive macro could make validation (or a step) run for ever.
    pub fn check_syntax(&self) -> Result<(), String> {
        if !self.is_dynamic() {
            return Ok(());
        }
        if let Some(m) = STATEMENT
            .captures_iter(&self.0)
            .find(|c| !ALLOWED_STATEMENTS.contains(&&c[1]))
        {
            return Err(format!(
                "`{{% {} %}}` is not allowed in a scenario template (only if/else and set)",
                &m[1]
            ));
        }
        if RANGE_CALL.is_match(&self.0) {
            return Err("`range()` is not allowed in a scenario template".to_string());
        }
        // tera's parser recurses per bracket; refuse absurd nesting before it sees it.
        let mut depth = 0usize;
        for c in self.0.chars() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > 32 {
                return Err("brackets nested more than 32 deep".to_string());
            }
        }
        let mut tera = Tera::default();
        tera.add_raw_template("template", &self.0)
            .map(|_| ())
            .map_err(|e| error_chain(&e))
    }
}

/// tera puts the useful part of a message in the error's sources.
fn error_chain(e: &tera::Error) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !text.starts_with("Failed to render") && !text.starts_with("Failed to parse") {
            parts.push(tidy(&text));
        }
        current = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// One line from a tera message: a parse error's "--> 1:18 ... = expected ..." becomes
/// "at column 18: expected ...", and the internal template name is dropped.
fn tidy(text: &str) -> String {
    let text = text.replace(" while rendering 'template'", "");
    if let Some(expected) = text.lines().find_map(|l| l.trim().strip_prefix("= ")) {
        let column = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("--> "))
            .and_then(|pos| pos.split(':').nth(1))
            .map(|c| format!("at column {c}: "))
            .unwrap_or_default();
        return format!("{column}{expected}");
    }
    text.trim().replace('\n', " ")
}

/// The variables a case's templates see: `device.*`, `tenant.*` (with
/// `tenant.users.<name>.upn`), `matrix.*` and `vars.*`. Secrets are not in it.
/// A variable that does not render (checked by `aplab validate`) is left as written.
pub fn case_context(
    device: &Device,
    tenant: Option<&TenantConfig>,
    case: &Case,
    vars: &BTreeMap<String, Template>,
) -> Context {
    let mut ctx = Context::new();
    ctx.insert("device", &device_value(device));
    if let Some(t) = tenant {
        ctx.insert("tenant", &tenant_value(t));
    }
    ctx.insert("matrix", case);
    let mut rendered = BTreeMap::new();
    for (name, template) in vars {
        let text = template.render(&ctx).unwrap_or_else(|_| template.0.clone());
        rendered.insert(name.clone(), text);
    }
    ctx.insert("vars", &rendered);
    ctx
}

fn device_value(d: &Device) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "serial": d.serial,
        "manufacturer": d.manufacturer,
        "model": d.model,
        "windows": {
            "edition": d.windows.edition.as_str(),
            "version": d.windows.version,
            "build": d.windows.build,
        },
        "tpm": d.tpm.as_ref().map(|t| serde_json::json!({
            "family": t.family,
            "manufacturer": t.manufacturer,
            "firmware": t.firmware,
        })),
        "tags": d.tags,
        "tenant": d.tenant,
    })
}

fn tenant_value(t: &TenantConfig) -> serde_json::Value {
    let users: BTreeMap<&str, serde_json::Value> = t
        .users
        .iter()
        .map(|(name, u)| {
            (
                name.as_str(),
                serde_json::json!({ "upn": u.upn, "ad_account": u.ad_account }),
            )
        })
        .collect();
    serde_json::json!({
        "name": t.name,
        "tenant_id": t.tenant_id,
        "client_id": t.client_id,
        "organization": t.organization,
        "profile": t.profile,
        "graph_url": t.graph_url,
        "users": users,
    })
}

/// The secret a `secret(name=...)` names, for this device: `tenant.users.<user>.password`
/// or `tenant.users.<user>.ad_password` of the device's tenant.
pub fn secret_ref<'a>(
    name: &str,
    device: &Device,
    inventory: &'a Inventory,
) -> Result<&'a SecretRef, String> {
    let tenant_name = device
        .tenant
        .as_deref()
        .ok_or_else(|| format!("the device has no `tenant:`, so `{name}` has no value"))?;
    let tenant = inventory
        .tenants
        .get(tenant_name)
        .ok_or_else(|| format!("tenant `{tenant_name}` is not defined"))?;
    tenant_secret_ref(name, tenant)
}

/// The reference behind a secret name within one tenant's credential set.
pub fn tenant_secret_ref<'a>(
    name: &str,
    tenant: &'a TenantConfig,
) -> Result<&'a SecretRef, String> {
    let parts: Vec<&str> = name.split('.').collect();
    let (user, field) = match parts.as_slice() {
        ["tenant", "users", user, field] if matches!(*field, "password" | "ad_password") => {
            (*user, *field)
        }
        _ => {
            return Err(format!(
                "`{name}` is not a secret name; secrets are `tenant.users.<user>.password` or `tenant.users.<user>.ad_password`"
            ));
        }
    };
    let tenant_name = &tenant.name;
    let u = tenant
        .users
        .get(user)
        .ok_or_else(|| format!("tenant `{tenant_name}` has no user `{user}`"))?;
    let secret = if field == "password" {
        &u.password
    } else {
        &u.ad_password
    };
    secret
        .as_ref()
        .ok_or_else(|| format!("user `{user}` of tenant `{tenant_name}` has no `{field}:`"))
}

impl SecretRef {
    /// Reads the secret now. Relative files are taken from `base_dir` (the inventory's
    /// directory); a trailing newline is dropped. The message never holds the value.
    pub fn resolve(&self, base_dir: &Path) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                format!("environment variable `{name}` is not set (it holds a secret the inventory refers to)")
            }),
            SecretRef::File(path) => {
                let full = base_dir.join(path);
                std::fs::read_to_string(&full)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read secret file {}: {e}; check that it exists and is readable", full.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_refused_by_plain_render_and_resolved_on_demand() {
        let t = Template::secret("tenant.users.default.password");
        assert_eq!(
            t.secret_names(),
            vec!["tenant.users.default.password".to_string()]
        );
        let ctx = Context::new();
        assert!(
            t.render(&ctx)
                .unwrap_err()
                .contains("resolved only by the engine")
        );
        let out = t
            .render_with_secrets(&ctx, &|name| Ok(format!("value-of-{name}")))
            .unwrap();
        assert_eq!(out, "value-of-tenant.users.default.password");
    }

    #[test]
    fn loops_macros_and_range_are_refused() {
        let ok = Template("{% if matrix.join == 'hybrid' %}YES{% else %}NO{% endif %}".into());
        assert!(ok.check_syntax().is_ok());
        for bad in [
            "{% for c in device.serial %}{{ c }}{% endfor %}",
            "{% macro m() %}{{ self::m() }}{% endmacro %}",
            "{{ range(end=100000000) | length }}",
        ] {
            assert!(Template(bad.into()).check_syntax().is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_text_renders_to_itself_and_errors_name_the_variable() {
        let ctx = Context::new();
        assert_eq!(Template("a < b".into()).render(&ctx).unwrap(), "a < b");
        let err = Template("{{ matrix.join }}".into())
            .render(&ctx)
            .unwrap_err();
        assert!(err.contains("matrix.join"), "{err}");
    }

    #[test]
    fn secret_files_are_read_relative_to_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
        let r = SecretRef::File("pw".into());
        assert_eq!(r.resolve(dir.path()).unwrap(), "hunter2");
        let missing = SecretRef::File("nope".into())
            .resolve(dir.path())
            .unwrap_err();
        assert!(missing.contains("cannot read secret file"));
        let env = SecretRef::Env("APLAB_TEST_SURELY_UNSET_VAR".into());
        assert!(env.resolve(dir.path()).unwrap_err().contains("is not set"));
    }
}
