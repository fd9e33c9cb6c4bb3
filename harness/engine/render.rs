//! Rendering scenario templates for one case.
//!
//! TODO(lead): replace with `Template::render` and `model::case_context` once the model
//! parser lands; this private copy exists only so the engine does not wait for it.

use tera::{Context, Tera};

use super::CaseRun;
use crate::model::scenario::Template;

/// The template context of a case: `device`, `tenant`, `matrix`, `vars`.
pub(crate) fn context(run: &CaseRun<'_>) -> Result<Context, String> {
    let mut ctx = Context::new();
    ctx.insert("device", run.device);
    ctx.insert("tenant", &run.tenant);
    ctx.insert("matrix", &run.case);
    let mut vars = std::collections::BTreeMap::new();
    for (name, template) in &run.scenario.vars {
        let value = render_with(template, &ctx).map_err(|e| format!("variable `{name}`: {e}"))?;
        vars.insert(name.clone(), value);
    }
    ctx.insert("vars", &vars);
    Ok(ctx)
}

/// Renders one template for this case.
pub(crate) fn render(run: &CaseRun<'_>, template: &Template) -> Result<String, String> {
    let ctx = context(run)?;
    render_with(template, &ctx)
}

fn render_with(template: &Template, ctx: &Context) -> Result<String, String> {
    Tera::one_off(&template.0, ctx, false).map_err(|e| {
        // tera hides the useful part in the error's source chain.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        format!("cannot render `{}`: {message}", template.0)
    })
}
