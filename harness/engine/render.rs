//! Rendering scenario templates for one case, through the model's templates: the
//! context (`device`, `tenant`, `matrix`, `vars`) comes from [`case_context`], and a
//! `secret(name=...)` call is resolved here, at the moment the step runs, from the
//! tenant's secret reference. The value lives only in the rendered string.

use std::path::Path;

use super::CaseRun;
use crate::model::scenario::Template;
use crate::model::{case_context, tenant_secret_ref};

/// Renders one template for this case.
pub(crate) fn render(run: &CaseRun<'_>, template: &Template) -> Result<String, String> {
    let ctx = case_context(run.device, run.tenant, &run.case, &run.scenario.vars);
    let resolve = |name: &str| -> Result<String, String> {
        let tenant = run.tenant.ok_or_else(|| {
            format!(
                "device `{}` has no tenant, so secret `{name}` has no value",
                run.device.id
            )
        })?;
        // The inventory's loader made secret file paths absolute or relative to the
        // working directory already.
        tenant_secret_ref(name, tenant)?.resolve(Path::new(""))
    };
    template
        .render_with_secrets(&ctx, &resolve)
        .map_err(|e| format!("cannot render `{}`: {e}", template.0))
}

/// A template as a person reads it in progress lines and event logs: rendered for this
/// case (`set group tag `entra``, not `{{ matrix.join }}`), but as written when it calls
/// `secret()`, so a secret's value never reaches a description, or when it does not
/// render (the step itself reports that).
pub(crate) fn shown(run: &CaseRun<'_>, template: &Template) -> String {
    if !template.is_dynamic() || !template.secret_names().is_empty() {
        return template.0.clone();
    }
    let ctx = case_context(run.device, run.tenant, &run.case, &run.scenario.vars);
    template
        .render_with_secrets(&ctx, &|_| Err("no secrets in descriptions".into()))
        .unwrap_or_else(|_| template.0.clone())
}
