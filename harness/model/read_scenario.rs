//! A scenario (or a reusable step block), read from its node tree. Blocks are expanded
//! here (`use:` + `with:`), so the [`Scenario`] holds plain steps that remember both the
//! block line and the `use:` line they came from.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::inventory::Capability;
use super::keys;
use super::node::{Node, NodeKind};
use super::problems::{Problems, Span, did_you_mean};
use super::read::{Fields, duration, list, number, one_of, string, string_map, strings, word};
use super::scenario::*;

/// The token-refresh rule: the user flow starts at least this long after the technician flow.
pub const MIN_GAP: Duration = Duration::from_secs(90 * 60);
/// IME certificates expire: the user flow runs within this long of the technician flow.
pub const MAX_GAP: Duration = Duration::from_secs(180 * 86_400);

const SCENARIO_KEYS: &[&str] = &[
    "name",
    "description",
    "kind",
    "priority",
    "requires",
    "matrix",
    "vars",
    "phases",
    "retry_on_other_device",
];
const BLOCK_KEYS: &[&str] = &["block", "description", "params", "steps"];
const PHASE_KEYS: &[&str] = &["name", "gap", "timeout", "expect_duration", "steps"];
const REQUIREMENT_KEYS: &[&str] = &["fact", "is", "in", "not_in", "present", "when"];
pub const ACTION_KEYS: &[&str] = &[
    "power",
    "keys",
    "text",
    "expect",
    "screen_check",
    "shell",
    "tpm",
    "tenant",
    "wait",
    "collect",
];
const COMMON_STEP_KEYS: &[&str] = &[
    "name",
    "timeout",
    "retry",
    "when",
    "continue_on_failure",
    "enabled",
];
/// Facts a requirement can name, besides `tags.<name>` and `has.<capability>`.
pub const FACTS: &[&str] = &[
    "id",
    "serial",
    "manufacturer",
    "model",
    "windows.edition",
    "windows.version",
    "windows.build",
    "tpm.family",
    "tpm.manufacturer",
    "tpm.firmware",
    "tpm.access",
    "tenant",
];
const COMPLIANCE_STATES: &[&str] = &[
    "unknown",
    "compliant",
    "noncompliant",
    "conflict",
    "error",
    "inGracePeriod",
    "configManager",
];
const ENROLLMENT_STATES: &[&str] = &[
    "unknown",
    "enrolled",
    "pendingReset",
    "failed",
    "notContacted",
    "blocked",
];
const FAILURE_CLASSES: &[&str] = &["product", "infrastructure", "timeout", "config", "harness"];

static WITH_REF: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*with\.([A-Za-z0-9_]+)\s*\}\}").expect("static regex"));

/// A reusable list of steps with parameters (`scenarios/blocks/NAME.yaml`).
#[derive(Debug, Clone)]
pub struct Block {
    pub name: String,
    pub name_span: Span,
    /// Parameter -> default (None: the `use:` must give it).
    pub params: Vec<(String, Option<Node>)>,
    pub steps: Node,
}

/// A template written in a scenario, kept with its place so a template that does not
/// render for some device is reported at the right line.
#[derive(Debug, Clone)]
pub struct TemplateSite {
    pub template: Template,
    pub span: Span,
    pub when: BTreeMap<String, String>,
}

/// A scenario as read, with the places `load` needs for its cross-checks.
#[derive(Debug)]
pub struct ReadScenario {
    pub scenario: Scenario,
    pub name_span: Span,
    pub requires_span: Span,
    /// Per phase, per step: where the step was written.
    pub step_spans: Vec<Vec<Span>>,
    pub templates: Vec<TemplateSite>,
    /// Secrets typed by `text: {secret: NAME}` steps.
    pub secrets: Vec<TemplateSite>,
    /// TPM checks that need an expectation in the inventory (manufacturer, firmware).
    pub tpm_checks: Vec<(TpmCheck, Span, BTreeMap<String, String>)>,
}

/// Whether a file is a block (`block:` at the top) rather than a scenario.
pub fn is_block(root: &Node) -> bool {
    root.get("block").is_some()
}

pub fn read_block(root: &Node, p: &mut Problems) -> Option<Block> {
    let f = Fields::of(root, BLOCK_KEYS, "a block", p)?;
    let name_node = f.req("block", "this block", p)?;
    let name = string(name_node, "block", p)?;
    let mut params = Vec::new();
    if let Some(pn) = f.get("params") {
        match pn.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    if let Some(pname) = string(k, "parameter name", p) {
                        params.push((pname, (!v.is_null()).then(|| v.clone())));
                    }
                }
            }
            None => {
                p.error(
                    &pn.span,
                    "`params` must map each parameter name to its default (`~` for none)",
                );
            }
        }
    }
    let steps = f.req("steps", "this block", p)?.clone();
    list(&steps, "steps", p)?;
    Some(Block {
        name,
        name_span: name_node.span.clone(),
        params,
        steps,
    })
}

/// Where the steps being read come from (a scenario, or a block used from it).
#[derive(Clone, Default)]
struct StepContext {
    block: Option<String>,
    used_at: Option<Box<Origin>>,
    when: BTreeMap<String, String>,
    /// Blocks being expanded, outermost first (to refuse a block that uses itself).
    chain: Vec<String>,
}

struct Reader<'a> {
    blocks: &'a HashMap<String, Block>,
    p: &'a mut Problems,
    matrix: BTreeMap<String, Vec<String>>,
    templates: Vec<TemplateSite>,
    secrets: Vec<TemplateSite>,
    tpm_checks: Vec<(TpmCheck, Span, BTreeMap<String, String>)>,
}

fn origin(span: &Span) -> Origin {
    Origin {
        file: span.file.path.clone(),
        line: span.line,
        column: span.col,
        block: None,
        used_at: None,
    }
}

pub fn read(
    root: &Node,
    blocks: &HashMap<String, Block>,
    p: &mut Problems,
) -> Option<ReadScenario> {
    let f = Fields::of(root, SCENARIO_KEYS, "a scenario", p)?;
    let mut r = Reader {
        blocks,
        p,
        matrix: BTreeMap::new(),
        templates: Vec::new(),
        secrets: Vec::new(),
        tpm_checks: Vec::new(),
    };
    let name_node = f.req("name", "this scenario", r.p);
    let name = name_node.and_then(|n| string(n, "name", r.p));
    if let (Some(n), Some(node)) = (&name, name_node)
        && (n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        r.p.error(
            &node.span,
            format!("scenario name `{n}` may only hold letters, digits, `-` and `_`"),
        )
        .hint("the name is used in report file names and on the command line");
    }
    let kind = match f.get("kind") {
        Some(n) => match word(n, "kind", &["test", "health"], r.p) {
            Some("health") => Some(ScenarioKind::Health),
            Some(_) => Some(ScenarioKind::Test),
            None => None,
        },
        None => Some(ScenarioKind::Test),
    };
    let priority = match f.get("priority") {
        Some(n) => number::<i32>(n, "priority", "e.g. 0, 10, -5", r.p),
        None => Some(0),
    };
    if let Some(m) = f.get("matrix") {
        r.matrix = r.read_matrix(m).unwrap_or_default();
    }
    let requires = match f.get("requires") {
        Some(n) => r.requirements(n),
        None => Some(Vec::new()),
    };
    let mut vars = BTreeMap::new();
    if let Some(v) = f.get("vars") {
        match v.as_map() {
            Some(entries) => {
                for (k, val) in entries {
                    let (Some(name), Some(text)) = (
                        string(k, "variable name", r.p),
                        string(val, "variable", r.p),
                    ) else {
                        continue;
                    };
                    let t = r.template(val, text, &BTreeMap::new());
                    vars.insert(name, t);
                }
            }
            None => {
                r.p.error(
                    &v.span,
                    "`vars` must map variable names to values (templates)",
                );
            }
        }
    }
    let mut phases = Vec::new();
    let mut step_spans = Vec::new();
    if let Some(pn) = f.req("phases", "this scenario", r.p)
        && let Some(items) = list(pn, "phases", r.p)
    {
        if items.is_empty() {
            r.p.error(&pn.span, "a scenario needs at least one phase");
        }
        let mut names: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some((phase, spans)) = r.phase(item, i, &names, phases.last()) else {
                continue;
            };
            names.push(phase.name.clone());
            phases.push(phase);
            step_spans.push(spans);
        }
    }
    let retry_on_other_device = f.bool("retry_on_other_device", true, r.p);
    let description = f.str("description", r.p).unwrap_or_default();
    let requires_span = f
        .key("requires")
        .map(|k| k.span.clone())
        .or(name_node.map(|n| n.span.clone()))
        .unwrap_or_else(|| root.span.clone());
    Some(ReadScenario {
        scenario: Scenario {
            name: name?,
            description,
            source: root.span.file.path.clone(),
            kind: kind?,
            priority: priority?,
            requires: requires?,
            matrix: r.matrix,
            vars,
            phases,
            retry_on_other_device,
        },
        name_span: name_node
            .map(|n| n.span.clone())
            .unwrap_or_else(|| root.span.clone()),
        requires_span,
        step_spans,
        templates: r.templates,
        secrets: r.secrets,
        tpm_checks: r.tpm_checks,
    })
}

impl Reader<'_> {
    fn read_matrix(&mut self, node: &Node) -> Option<BTreeMap<String, Vec<String>>> {
        let Some(entries) = node.as_map() else {
            self.p
                .error(
                    &node.span,
                    format!(
                        "`matrix` must map axis names to lists of values, found {}",
                        node.describe()
                    ),
                )
                .hint("e.g. `matrix: { join: [entra, hybrid] }`");
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let Some(axis) = string(k, "matrix axis", self.p) else {
                continue;
            };
            let Some(items) = list(v, &axis, self.p) else {
                continue;
            };
            if items.is_empty() {
                self.p
                    .error(&v.span, format!("matrix axis `{axis}` has no values"));
                continue;
            }
            let mut values: Vec<String> = Vec::new();
            for item in items {
                if let Some(s) = string(item, &axis, self.p) {
                    if values.contains(&s) {
                        self.p
                            .error(&item.span, format!("`{s}` is listed twice in `{axis}`"));
                    }
                    values.push(s);
                }
            }
            out.insert(axis, values);
        }
        Some(out)
    }

    /// `when: {join: hybrid}`: axes must exist in the matrix, and so must values written
    /// in the scenario itself. A block may name values a scenario leaves out of its matrix
    /// (the Windows 10 steps of a scenario that only runs Windows 11): those steps just
    /// never run.
    fn when(&mut self, node: &Node, in_block: bool) -> BTreeMap<String, String> {
        let Some(map) = string_map(node, "when", self.p) else {
            return BTreeMap::new();
        };
        for (k, v) in node.as_map().unwrap_or_default() {
            let (Some(axis), Some(value)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            match self.matrix.get(axis) {
                None => {
                    let axes: Vec<&str> = self.matrix.keys().map(String::as_str).collect();
                    let problem = self.p.error(
                        &k.span,
                        format!("`when` names `{axis}`, which is not a matrix axis"),
                    );
                    match did_you_mean(axis, &axes) {
                        Some(close) => problem.hint(format!("did you mean `{close}`?")),
                        None if axes.is_empty() => problem.hint("this scenario has no `matrix:`"),
                        None => problem.hint(format!("matrix axes: {}", axes.join(", "))),
                    };
                }
                Some(values) if !in_block && !values.iter().any(|x| x == value) => {
                    let names: Vec<&str> = values.iter().map(String::as_str).collect();
                    let problem = self.p.error(
                        &v.span,
                        format!("`{value}` is not a value of matrix axis `{axis}`"),
                    );
                    match did_you_mean(value, &names) {
                        Some(close) => problem.hint(format!("did you mean `{close}`?")),
                        None => problem.hint(format!("values of `{axis}`: {}", names.join(", "))),
                    };
                }
                Some(_) => {}
            }
        }
        map
    }

    fn template(&mut self, node: &Node, text: String, when: &BTreeMap<String, String>) -> Template {
        let t = Template(text);
        if let Err(e) = t.check_syntax() {
            self.p
                .error(&node.span, format!("template does not parse: {e}"))
                .hint("templates are tera: `{{ device.serial }}`, `{{ matrix.join }}`, `{{ vars.name }}`");
        } else if !t.secret_names().is_empty() || t.0.contains("secret(") {
            self.p
                .error(&node.span, "a secret can only be typed by a `text: { secret: NAME }` step")
                .hint("write `text: { secret: tenant.users.default.password }` so the value stays out of logs");
        } else if t.is_dynamic() {
            self.templates.push(TemplateSite {
                template: t.clone(),
                span: node.span.clone(),
                when: when.clone(),
            });
        }
        t
    }

    fn requirements(&mut self, node: &Node) -> Option<Vec<Requirement>> {
        let items = list(node, "requires", self.p)?;
        let mut out = Vec::new();
        for item in items {
            if let Some(r) = self.requirement(item) {
                out.push(r);
            }
        }
        Some(out)
    }

    fn requirement(&mut self, node: &Node) -> Option<Requirement> {
        let f = Fields::of(node, REQUIREMENT_KEYS, "a requirement", self.p)?;
        let fact_node = f.req("fact", "this requirement", self.p)?;
        let fact = string(fact_node, "fact", self.p)?;
        let known = FACTS.contains(&fact.as_str())
            || fact.strip_prefix("tags.").is_some_and(|t| !t.is_empty())
            || fact
                .strip_prefix("has.")
                .is_some_and(|c| Capability::from_name(c).is_some());
        if !known {
            let problem = self
                .p
                .error(&fact_node.span, format!("`{fact}` is not a device fact"));
            match did_you_mean(&fact, FACTS) {
                Some(close) => problem.hint(format!("did you mean `{close}`?")),
                None => problem.hint(format!(
                    "facts: {}, tags.<name>, has.<capability>",
                    FACTS.join(", ")
                )),
            };
        }
        let tests: Vec<&str> = ["is", "in", "not_in", "present"]
            .into_iter()
            .filter(|k| f.has(k))
            .collect();
        let test = match tests.as_slice() {
            ["is"] => strings(f.get("is")?, "is", self.p).map(FactTest::OneOf),
            ["in"] => list(f.get("in")?, "in", self.p)
                .and_then(|_| strings(f.get("in")?, "in", self.p))
                .map(FactTest::OneOf),
            ["not_in"] => strings(f.get("not_in")?, "not_in", self.p).map(FactTest::NoneOf),
            ["present"] => f
                .get("present")
                .and_then(|n| super::read::boolean(n, "present", self.p))
                .map(FactTest::Present),
            [] => {
                self.p
                    .error(&node.span, format!("requirement on `{fact}` has no test"))
                    .hint(
                        "add one of `is: value`, `in: [a, b]`, `not_in: [a, b]`, `present: true`",
                    );
                None
            }
            _ => {
                self.p
                    .error(
                        &node.span,
                        format!(
                            "requirement on `{fact}` has more than one test ({})",
                            tests.join(", ")
                        ),
                    )
                    .hint("write one requirement per test");
                None
            }
        };
        if fact == "windows.edition"
            && let Some(FactTest::OneOf(values) | FactTest::NoneOf(values)) = &test
        {
            let n = f
                .get("is")
                .or(f.get("in"))
                .or(f.get("not_in"))
                .unwrap_or(node);
            let items: Vec<&Node> = match n.as_seq() {
                Some(items) => items.iter().collect(),
                None => vec![n],
            };
            for (v, n) in values.iter().zip(items) {
                if super::inventory::Edition::from_name(v).is_none() {
                    self.p
                        .error(&n.span, format!("`{v}` is not a Windows edition"))
                        .hint("editions: home, pro, enterprise, education");
                }
            }
        }
        let when = f
            .get("when")
            .map(|n| self.when(n, false))
            .unwrap_or_default();
        Some(Requirement {
            fact,
            test: test?,
            when,
        })
    }

    fn phase(
        &mut self,
        node: &Node,
        index: usize,
        earlier: &[String],
        previous: Option<&Phase>,
    ) -> Option<(Phase, Vec<Span>)> {
        let f = Fields::of(node, PHASE_KEYS, "a phase", self.p)?;
        let name_node = f.req("name", "this phase", self.p);
        let name = name_node.and_then(|n| string(n, "name", self.p));
        if let (Some(n), Some(nn)) = (&name, name_node)
            && earlier.contains(n)
        {
            self.p
                .error(&nn.span, format!("phase name `{n}` is used twice"));
        }
        let gap = f.get("gap").and_then(|n| self.gap(n, index));
        if index > 0
            && gap.is_none()
            && !f.has("gap")
            && name.as_deref() == Some("user")
            && previous.is_some_and(|p| p.name == "technician")
        {
            self.p
                .error(&name_node.unwrap_or(node).span, "the user phase follows the technician phase without a `gap:`")
                .hint("the process demands at least 90m between them: add `gap: { min: 90m, max: 180d }`");
        }
        let timeout = f.duration("timeout", self.p);
        let expect_duration = f.duration("expect_duration", self.p);
        let mut steps = Vec::new();
        if let Some(sn) = f.req("steps", "this phase", self.p)
            && let Some(items) = list(sn, "steps", self.p)
        {
            self.steps(items, &StepContext::default(), &mut steps);
            if steps.is_empty() && !items.is_empty() && !self.p.has_errors() {
                self.p
                    .error(&sn.span, "every step of this phase is disabled");
            } else if items.is_empty() {
                self.p.error(&sn.span, "a phase needs at least one step");
            }
        }
        // Names unique within the phase: a generated name gets a number.
        let mut seen: HashMap<String, u32> = HashMap::new();
        for (step, span, explicit) in &mut steps {
            let count = seen.entry(step.name.clone()).or_insert(0);
            *count += 1;
            if *count > 1 {
                if *explicit {
                    self.p
                        .error(
                            span,
                            format!("step name `{}` is used twice in this phase", step.name),
                        )
                        .hint("step names identify steps in reports; make them unique");
                } else {
                    step.name = format!("{} #{count}", step.name);
                }
            }
        }
        let (steps, spans): (Vec<Step>, Vec<Span>) =
            steps.into_iter().map(|(s, sp, _)| (s, sp)).unzip();
        Some((
            Phase {
                name: name?,
                gap,
                timeout,
                expect_duration,
                steps,
            },
            spans,
        ))
    }

    /// A phase's gap counts from the end of the previous phase; on the first phase, from
    /// the device's last reseal on record (a user flow run on its own).
    fn gap(&mut self, node: &Node, _index: usize) -> Option<Gap> {
        let (min, max, allow_short, min_span) = if node.as_str().is_some() {
            (
                duration(node, "gap", self.p)?,
                None,
                false,
                node.span.clone(),
            )
        } else {
            let f = Fields::of(node, &["min", "max", "allow_short"], "`gap:`", self.p)?;
            let min_node = f.req("min", "`gap:`", self.p)?;
            let min = duration(min_node, "min", self.p)?;
            let max = match f.get("max") {
                Some(n) => {
                    let m = duration(n, "max", self.p)?;
                    if m > MAX_GAP {
                        self.p
                            .error(&n.span, "gap `max` is longer than 180d")
                            .hint("IME certificates expire 6 months after the technician flow; keep `max` at 180d or less");
                    }
                    if m < min {
                        self.p.error(&n.span, "gap `max` is shorter than `min`");
                    }
                    Some(m)
                }
                None => None,
            };
            (
                min,
                max,
                f.bool("allow_short", false, self.p),
                min_node.span.clone(),
            )
        };
        if min < MIN_GAP && !allow_short {
            self.p
                .error(&min_span, format!("gap of {} is shorter than the 90m the process demands", super::duration::format_duration(min)))
                .hint("write at least `min: 90m`; a negative scenario that means it writes `gap: { min: 10m, allow_short: true }`");
        }
        if min > MAX_GAP {
            self.p
                .error(&min_span, "gap is longer than 180d")
                .hint("IME certificates expire 6 months after the technician flow");
        }
        Some(Gap { min, max })
    }

    fn steps(&mut self, items: &[Node], ctx: &StepContext, out: &mut Vec<(Step, Span, bool)>) {
        for item in items {
            if item.get("use").is_some() {
                self.use_block(item, ctx, out);
            } else if let Some((step, explicit)) = self.step(item, ctx) {
                out.push((step, item.span.clone(), explicit));
            }
        }
    }

    fn use_block(&mut self, node: &Node, ctx: &StepContext, out: &mut Vec<(Step, Span, bool)>) {
        let Some(f) = Fields::of(
            node,
            &["use", "with", "when"],
            "a `use:` of a block",
            self.p,
        ) else {
            return;
        };
        let Some(use_node) = f.get("use") else { return };
        let Some(name) = string(use_node, "use", self.p) else {
            return;
        };
        let Some(block) = self.blocks.get(&name) else {
            let mut names: Vec<&str> = self.blocks.keys().map(String::as_str).collect();
            names.sort();
            let problem = self
                .p
                .error(&use_node.span, format!("no block named `{name}`"));
            match did_you_mean(&name, &names) {
                Some(close) => problem.hint(format!("did you mean `{close}`?")),
                None => problem
                    .hint("blocks live in scenarios/blocks/, each with `block: NAME` at the top"),
            };
            return;
        };
        if ctx.chain.contains(&name) || ctx.chain.len() >= 8 {
            self.p
                .error(
                    &use_node.span,
                    format!(
                        "block `{name}` uses itself (through {})",
                        ctx.chain.join(" -> ")
                    ),
                )
                .hint("a block may use other blocks, but not in a loop");
            return;
        }
        let mut values: BTreeMap<String, Node> = BTreeMap::new();
        let declared: Vec<&str> = block.params.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(w) = f.get("with") {
            match w.as_map() {
                Some(entries) => {
                    for (k, v) in entries {
                        let Some(pname) = string(k, "parameter", self.p) else {
                            continue;
                        };
                        if !declared.contains(&pname.as_str()) {
                            let problem = self.p.error(
                                &k.span,
                                format!("block `{name}` has no parameter `{pname}`"),
                            );
                            match did_you_mean(&pname, &declared) {
                                Some(close) => problem.hint(format!("did you mean `{close}`?")),
                                None => {
                                    problem.hint(format!("its parameters: {}", declared.join(", ")))
                                }
                            };
                            continue;
                        }
                        values.insert(pname, v.clone());
                    }
                }
                None => {
                    self.p
                        .error(&w.span, "`with` must map parameter names to values");
                }
            }
        }
        let mut missing = false;
        for (pname, default) in &block.params {
            if values.contains_key(pname) {
                continue;
            }
            match default {
                Some(d) => {
                    values.insert(pname.clone(), d.clone());
                }
                None => {
                    self.p
                        .error(
                            &use_node.span,
                            format!("block `{name}` needs parameter `{pname}`"),
                        )
                        .hint(format!(
                            "add it under `with:`, e.g. `with: {{ {pname}: ... }}`"
                        ));
                    missing = true;
                }
            }
        }
        if missing {
            // Expanding without it would only repeat the problem inside the block.
            return;
        }
        let steps = substitute(&block.steps, &values, &name, self.p);
        let mut when = ctx.when.clone();
        if let Some(w) = f.get("when") {
            when.extend(self.when(w, ctx.block.is_some()));
        }
        let mut chain = ctx.chain.clone();
        chain.push(name.clone());
        let mut site = origin(&node.span);
        site.block = ctx.block.clone();
        site.used_at = ctx.used_at.clone();
        let inner = StepContext {
            block: Some(name),
            used_at: Some(Box::new(site)),
            when,
            chain,
        };
        if let Some(items) = steps.as_seq() {
            self.steps(items, &inner, out);
        }
    }

    /// One step; the bool says whether its name was written (not generated).
    fn step(&mut self, node: &Node, ctx: &StepContext) -> Option<(Step, bool)> {
        let allowed: Vec<&str> = COMMON_STEP_KEYS
            .iter()
            .chain(ACTION_KEYS)
            .copied()
            .collect();
        let f = Fields::of(node, &allowed, "a step", self.p)?;
        if let Some(n) = f.get("enabled")
            && !super::read::boolean(n, "enabled", self.p)?
        {
            return None;
        }
        let actions: Vec<&str> = ACTION_KEYS.iter().copied().filter(|k| f.has(k)).collect();
        let kind = match actions.as_slice() {
            [one] => *one,
            [] => {
                let all_known = f
                    .entries()
                    .iter()
                    .all(|(k, _)| k.as_str().is_some_and(|k| allowed.contains(&k)));
                if all_known {
                    self.p
                        .error(&node.span, "this step does nothing: it has no action")
                        .hint(format!(
                            "a step has one of: {}, or is `use: BLOCK`",
                            ACTION_KEYS.join(", ")
                        ));
                }
                return None;
            }
            [_, second, ..] => {
                let span = f
                    .key(second)
                    .map(|k| k.span.clone())
                    .unwrap_or(node.span.clone());
                self.p
                    .error(
                        &span,
                        format!(
                            "a step has one action, this one has {}",
                            actions.join(" and ")
                        ),
                    )
                    .hint("split it into two steps");
                return None;
            }
        };
        let mut when = ctx.when.clone();
        if let Some(w) = f.get("when") {
            when.extend(self.when(w, ctx.block.is_some()));
        }
        let action = self.action(kind, f.get(kind)?, &when);
        let timeout = f.duration("timeout", self.p);
        if let (Some(t), Some(n)) = (timeout, f.get("timeout"))
            && t.is_zero()
        {
            self.p.error(&n.span, "`timeout` must be longer than 0s");
        }
        let retry = match f.get("retry") {
            Some(n) => self.retry(n),
            None => Some(Retry::default()),
        };
        let explicit = f.get("name").and_then(|n| string(n, "name", self.p));
        let action = action?;
        let name = explicit.clone().unwrap_or_else(|| default_name(&action));
        let mut o = origin(&node.span);
        o.block = ctx.block.clone();
        o.used_at = ctx.used_at.clone();
        Some((
            Step {
                name,
                origin: o,
                timeout,
                retry: retry?,
                when,
                continue_on_failure: f.bool("continue_on_failure", false, self.p),
                action,
            },
            explicit.is_some(),
        ))
    }

    fn retry(&mut self, node: &Node) -> Option<Retry> {
        if node.as_str().is_some() {
            let attempts = number::<u32>(node, "retry", "the total number of attempts", self.p)?;
            return self.attempts(node, attempts).map(|attempts| Retry {
                attempts,
                ..Retry::default()
            });
        }
        let f = Fields::of(node, &["attempts", "backoff", "on"], "`retry:`", self.p)?;
        let an = f.req("attempts", "`retry:`", self.p)?;
        let attempts = number::<u32>(an, "attempts", "the total number of attempts", self.p)
            .and_then(|a| self.attempts(an, a));
        let backoff = f
            .duration("backoff", self.p)
            .unwrap_or(Retry::default().backoff);
        let on = match f.get("on") {
            Some(n) => {
                let mut classes = Vec::new();
                for item in list(n, "on", self.p)? {
                    classes.push(failure_class(word(item, "on", FAILURE_CLASSES, self.p)?));
                }
                classes
            }
            None => Retry::default().on,
        };
        Some(Retry {
            attempts: attempts?,
            backoff,
            on,
        })
    }

    fn attempts(&mut self, node: &Node, attempts: u32) -> Option<u32> {
        if (1..=20).contains(&attempts) {
            Some(attempts)
        } else {
            self.p
                .error(
                    &node.span,
                    format!("retry attempts must be 1 to 20, found {attempts}"),
                )
                .hint("attempts count the first try: `retry: 3` tries three times");
            None
        }
    }

    fn action(&mut self, kind: &str, v: &Node, when: &BTreeMap<String, String>) -> Option<Action> {
        match kind {
            "power" => self.power(v).map(Action::Power),
            "keys" => self.keys(v).map(Action::Keys),
            "text" => self.text(v, when),
            "expect" => self.expect(v, when).map(Action::Expect),
            "screen_check" => self.screen_check(v, when).map(Action::ScreenCheck),
            "shell" => self.shell(v, when).map(Action::Shell),
            "tpm" => self.tpm(v, when).map(Action::Tpm),
            "tenant" => self.tenant(v, when).map(Action::Tenant),
            "wait" => self.wait(v, when).map(Action::Wait),
            _ => self.collect(v).map(Action::Collect),
        }
    }

    fn power(&mut self, v: &Node) -> Option<PowerAction> {
        if v.as_str().is_some() {
            return match word(v, "power", &["on", "off", "cycle"], self.p)? {
                "on" => Some(PowerAction::On),
                "off" => Some(PowerAction::Off),
                _ => Some(PowerAction::Cycle),
            };
        }
        let (_, state) = one_of(v, "`power:`", &["expect"], self.p)?;
        match word(state, "expect", &["on", "off"], self.p)? {
            "on" => Some(PowerAction::Expect(PowerState::On)),
            _ => Some(PowerAction::Expect(PowerState::Off)),
        }
    }

    fn keys(&mut self, v: &Node) -> Option<Vec<KeyPress>> {
        let items: Vec<&Node> = match v.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        if items.is_empty() {
            self.p.error(&v.span, "`keys` is empty");
            return None;
        }
        let names = keys::all();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let press = if item.as_str().is_some() {
                word(item, "key", &names, self.p).map(|k| KeyPress {
                    key: k.to_string(),
                    modifiers: Vec::new(),
                    times: 1,
                })
            } else {
                self.key_press(item, &names)
            };
            match press {
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn key_press(&mut self, node: &Node, names: &[&str]) -> Option<KeyPress> {
        let f = Fields::of(node, &["key", "times", "modifiers"], "a key press", self.p)?;
        let key = word(
            f.req("key", "this key press", self.p)?,
            "key",
            names,
            self.p,
        );
        let times = match f.get("times") {
            Some(n) => match number::<u32>(n, "times", "1 to 100", self.p) {
                Some(t) if (1..=100).contains(&t) => Some(t),
                Some(t) => {
                    self.p
                        .error(&n.span, format!("`times` must be 1 to 100, found {t}"));
                    None
                }
                None => None,
            },
            None => Some(1),
        };
        let mut modifiers = Vec::new();
        if let Some(m) = f.get("modifiers") {
            for item in list(m, "modifiers", self.p)? {
                modifiers.push(word(item, "modifier", keys::MODIFIERS, self.p)?.to_string());
            }
        }
        Some(KeyPress {
            key: key?.to_string(),
            modifiers,
            times: times?,
        })
    }

    fn text(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<Action> {
        if let Some(text) = v.as_str() {
            let t = self.template(v, text.to_string(), when);
            return Some(Action::Text {
                text: t,
                secret: false,
            });
        }
        let (_, name_node) = one_of(v, "`text:`", &["secret"], self.p)?;
        let name = string(name_node, "secret", self.p)?;
        let valid = {
            let parts: Vec<&str> = name.split('.').collect();
            matches!(parts.as_slice(), ["tenant", "users", u, "password" | "ad_password"] if !u.is_empty())
        };
        if !valid {
            self.p
                .error(&name_node.span, format!("`{name}` is not a secret name"))
                .hint("secrets a step can type: `tenant.users.<user>.password`, `tenant.users.<user>.ad_password`");
            return None;
        }
        self.secrets.push(TemplateSite {
            template: Template(name.clone()),
            span: name_node.span.clone(),
            when: when.clone(),
        });
        Some(Action::Text {
            text: Template::secret(&name),
            secret: true,
        })
    }

    fn expect(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<Expect> {
        let f = Fields::of(v, &["on", "text", "regex", "any_of"], "`expect:`", self.p)?;
        let source = match word(
            f.req("on", "`expect:`", self.p)?,
            "on",
            &["console", "screen"],
            self.p,
        )? {
            "console" => Source::Console,
            _ => Source::Screen,
        };
        let forms: Vec<&str> = ["text", "regex", "any_of"]
            .into_iter()
            .filter(|k| f.has(k))
            .collect();
        let any_of = match forms.as_slice() {
            ["any_of"] => {
                let items = list(f.get("any_of")?, "any_of", self.p)?;
                if items.is_empty() {
                    self.p.error(&v.span, "`any_of` is empty");
                    return None;
                }
                let mut outcomes: Vec<Outcome> = Vec::new();
                for item in items {
                    let o = self.outcome(item, when)?;
                    if outcomes.iter().any(|x| x.name == o.name) {
                        self.p
                            .error(&item.span, format!("outcome `{}` is named twice", o.name));
                    }
                    outcomes.push(o);
                }
                outcomes
            }
            [one] => {
                let pattern = self.pattern(one, f.get(one)?, when)?;
                vec![Outcome {
                    name: "match".to_string(),
                    pattern,
                    verdict: Verdict::Pass,
                }]
            }
            [] => {
                self.p
                    .error(&v.span, "`expect` needs what to wait for")
                    .hint("give `text:`, `regex:` or `any_of: [{name, text|regex, verdict}]`");
                return None;
            }
            _ => {
                self.p
                    .error(
                        &v.span,
                        format!(
                            "`expect` takes one of text, regex, any_of; found {}",
                            forms.join(" and ")
                        ),
                    )
                    .hint("for several patterns, list them under `any_of:`");
                return None;
            }
        };
        Some(Expect { source, any_of })
    }

    fn pattern(
        &mut self,
        kind: &str,
        node: &Node,
        when: &BTreeMap<String, String>,
    ) -> Option<Pattern> {
        let text = string(node, kind, self.p)?;
        if text.is_empty() {
            self.p.error(
                &node.span,
                format!("`{kind}` is empty; it would match anything"),
            );
            return None;
        }
        if kind == "text" {
            return Some(Pattern::Text(self.template(node, text, when)));
        }
        match regex::RegexBuilder::new(&text).size_limit(1 << 20).build() {
            Ok(_) => Some(Pattern::Regex(text)),
            Err(e) => {
                let text = e.to_string();
                let last = text.lines().last().unwrap_or_default().trim();
                let detail = last.strip_prefix("error: ").unwrap_or(last);
                self.p
                    .error(&node.span, format!("`regex` does not compile: {detail}"))
                    .hint("regexes use Rust `regex` syntax; single-quote them in YAML so backslashes stay");
                None
            }
        }
    }

    fn outcome(&mut self, node: &Node, when: &BTreeMap<String, String>) -> Option<Outcome> {
        let f = Fields::of(
            node,
            &["name", "text", "regex", "verdict", "class"],
            "an outcome",
            self.p,
        )?;
        let name = f.req_str("name", "this outcome", self.p);
        let pattern = match (f.get("text"), f.get("regex")) {
            (Some(t), None) => self.pattern("text", t, when),
            (None, Some(r)) => self.pattern("regex", r, when),
            _ => {
                self.p.error(
                    &node.span,
                    "an outcome has exactly one of `text:` or `regex:`",
                );
                None
            }
        };
        let verdict = match f.get("verdict") {
            Some(n) => word(n, "verdict", &["pass", "fail"], self.p),
            None => Some("pass"),
        };
        let class = match f.get("class") {
            Some(n) => {
                if verdict == Some("pass") {
                    self.p
                        .error(&n.span, "`class` only applies to `verdict: fail`");
                }
                word(n, "class", FAILURE_CLASSES, self.p).map(failure_class)
            }
            None => Some(FailureClass::Product),
        };
        let verdict = match verdict? {
            "pass" => Verdict::Pass,
            _ => Verdict::Fail(class?),
        };
        Some(Outcome {
            name: name?,
            pattern: pattern?,
            verdict,
        })
    }

    fn template_map(
        &mut self,
        node: &Node,
        what: &str,
        when: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, Template>> {
        let map = string_map(node, what, self.p)?;
        let mut out = BTreeMap::new();
        for (k, v) in node.as_map().unwrap_or_default() {
            if let (Some(key), Some(value)) = (k.as_str(), map.get(k.as_str().unwrap_or_default()))
            {
                let t = self.template(v, value.clone(), when);
                out.insert(key.to_string(), t);
            }
        }
        Some(out)
    }

    fn screen_check(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<ScreenCheck> {
        let f = Fields::of(v, &["fields", "qr"], "`screen_check:`", self.p)?;
        let fields = match f.get("fields") {
            Some(n) => self.template_map(n, "fields", when)?,
            None => BTreeMap::new(),
        };
        let qr = match f.get("qr") {
            Some(n) => self.template_map(n, "qr", when)?,
            None => BTreeMap::new(),
        };
        if fields.is_empty() && qr.is_empty() {
            self.p
                .error(&v.span, "`screen_check` checks nothing")
                .hint("give `fields: { profile: ..., organization: ..., user: ... }` and/or `qr: { ZtdId: ... }`");
            return None;
        }
        Some(ScreenCheck { fields, qr })
    }

    fn shell(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<ShellStep> {
        let f = Fields::of(
            v,
            &["run", "args", "exit", "expect", "stdout_matches"],
            "`shell:`",
            self.p,
        )?;
        let run_node = f.req("run", "`shell:`", self.p)?;
        let program = string(run_node, "run", self.p)?;
        if program.contains("{{") || program.contains("{%") {
            self.p
                .error(&run_node.span, "the program to run cannot be a template")
                .hint("variables may go into `args:`, each rendered as one quoted argument");
            return None;
        }
        if program.trim().is_empty() || program.contains(char::is_whitespace) {
            self.p
                .error(
                    &run_node.span,
                    format!("`run` must be one program name, found `{program}`"),
                )
                .hint("put arguments under `args:`, e.g. `run: dsregcmd` + `args: [/status]`");
            return None;
        }
        let mut args = Vec::new();
        if let Some(a) = f.get("args") {
            for item in list(a, "args", self.p)? {
                let text = string(item, "args", self.p)?;
                args.push(self.template(item, text, when));
            }
        }
        let exit = match f.get("exit") {
            Some(n) => Some(number::<i32>(n, "exit", "an exit status", self.p)?),
            None => None,
        };
        let expect = match f.get("expect") {
            Some(n) => self.template_map(n, "expect", when)?,
            None => BTreeMap::new(),
        };
        let mut stdout_matches = Vec::new();
        if let Some(m) = f.get("stdout_matches") {
            for item in list(m, "stdout_matches", self.p)? {
                if let Some(Pattern::Regex(r)) = self.pattern("regex", item, when) {
                    stdout_matches.push(r);
                }
            }
        }
        Some(ShellStep {
            program,
            args,
            exit,
            expect,
            stdout_matches,
        })
    }

    fn tpm(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<Vec<TpmCheck>> {
        let names = [
            "family",
            "manufacturer",
            "firmware",
            "ek_certificate",
            "attestation",
        ];
        let items: Vec<&Node> = match v.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        let mut out = Vec::new();
        for item in items {
            let check = match word(item, "tpm check", &names, self.p)? {
                "family" => TpmCheck::Family,
                "manufacturer" => TpmCheck::Manufacturer,
                "firmware" => TpmCheck::Firmware,
                "ek_certificate" => TpmCheck::EkCertificate,
                _ => TpmCheck::Attestation,
            };
            if matches!(
                check,
                TpmCheck::Manufacturer | TpmCheck::Firmware | TpmCheck::EkCertificate
            ) {
                self.tpm_checks
                    .push((check.clone(), item.span.clone(), when.clone()));
            }
            out.push(check);
        }
        if out.is_empty() {
            self.p.error(&v.span, "`tpm` lists no checks");
            return None;
        }
        Some(out)
    }

    fn tenant(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<TenantOp> {
        let ops = [
            "reset_record",
            "set_group_tag",
            "wait_profile_assigned",
            "assign_user",
            "unassign_user",
            "compliance",
            "match_qr",
            "enrollment_state",
        ];
        if v.as_str().is_some() {
            return match word(v, "tenant", &ops, self.p)? {
                "reset_record" => Some(TenantOp::ResetRecord {
                    method: ResetMethod::Delete,
                }),
                "unassign_user" => Some(TenantOp::UnassignUser),
                "match_qr" => Some(TenantOp::MatchQr),
                other => {
                    self.p
                        .error(&v.span, format!("tenant operation `{other}` needs a value"))
                        .hint(format!("write it as `tenant: {{ {other}: ... }}`"));
                    None
                }
            };
        }
        let (op, value) = one_of(v, "`tenant:`", &ops, self.p)?;
        match op {
            "reset_record" => match word(
                value,
                "reset_record",
                &["delete", "allow-next-enrollment"],
                self.p,
            )? {
                "delete" => Some(TenantOp::ResetRecord {
                    method: ResetMethod::Delete,
                }),
                _ => Some(TenantOp::ResetRecord {
                    method: ResetMethod::AllowNextEnrollment,
                }),
            },
            "set_group_tag" => {
                let text = string(value, "set_group_tag", self.p)?;
                Some(TenantOp::SetGroupTag {
                    tag: self.template(value, text, when),
                })
            }
            "wait_profile_assigned" => duration(value, "wait_profile_assigned", self.p)
                .map(|deadline| TenantOp::WaitProfileAssigned { deadline }),
            "assign_user" => {
                let text = string(value, "assign_user", self.p)?;
                Some(TenantOp::AssignUser {
                    user: self.template(value, text, when),
                })
            }
            "compliance" => {
                let f = Fields::of(value, &["expect", "deadline"], "`compliance:`", self.p)?;
                let expect_node = f.req("expect", "`compliance:`", self.p)?;
                let expect = self.states(expect_node, "expect", COMPLIANCE_STATES);
                let deadline = f
                    .req("deadline", "`compliance:`", self.p)
                    .and_then(|n| duration(n, "deadline", self.p));
                Some(TenantOp::Compliance {
                    expect: expect?,
                    deadline: deadline?,
                })
            }
            "enrollment_state" => self
                .states(value, "enrollment_state", ENROLLMENT_STATES)
                .map(|expect| TenantOp::EnrollmentState { expect }),
            other => {
                self.p
                    .error(
                        &v.span,
                        format!("tenant operation `{other}` takes no value"),
                    )
                    .hint(format!("write it as `tenant: {other}`"));
                None
            }
        }
    }

    fn states(&mut self, node: &Node, what: &str, allowed: &[&str]) -> Option<Vec<String>> {
        let items: Vec<&Node> = match node.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            out.push(word(item, what, allowed, self.p)?.to_string());
        }
        Some(out)
    }

    fn wait(&mut self, v: &Node, when: &BTreeMap<String, String>) -> Option<Wait> {
        if v.as_str().is_some() {
            return duration(v, "wait", self.p).map(Wait::Fixed);
        }
        let f = Fields::of(v, &["until", "deadline", "interval"], "`wait:`", self.p)?;
        let until = f.req("until", "`wait:`", self.p)?;
        let deadline = f
            .req("deadline", "`wait:`", self.p)
            .and_then(|n| duration(n, "deadline", self.p));
        let interval = f
            .duration("interval", self.p)
            .unwrap_or(Duration::from_secs(10));
        let inner: Vec<&str> = ACTION_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "wait")
            .collect();
        let (kind, node) = one_of(until, "the condition of `until:`", &inner, self.p)?;
        let check = self.action(kind, node, when)?;
        Some(Wait::Until {
            check: Box::new(check),
            deadline: deadline?,
            interval,
        })
    }

    fn collect(&mut self, v: &Node) -> Option<Vec<Diagnostic>> {
        let all = [
            ("mdm-diagnostics", Diagnostic::MdmDiagnostics),
            ("dsregcmd", Diagnostic::Dsregcmd),
            ("get-tpm", Diagnostic::GetTpm),
            ("event-logs", Diagnostic::EventLogs),
            ("console", Diagnostic::Console),
            ("screenshot", Diagnostic::Screenshot),
        ];
        if v.as_str() == Some("all") {
            return Some(all.iter().map(|(_, d)| *d).collect());
        }
        let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        let mut out = Vec::new();
        for item in list(v, "collect", self.p)? {
            let w = word(item, "collect", &names, self.p)?;
            if let Some((_, d)) = all.iter().find(|(n, _)| *n == w) {
                out.push(*d);
            }
        }
        Some(out)
    }
}

fn failure_class(name: &str) -> FailureClass {
    match name {
        "infrastructure" => FailureClass::Infrastructure,
        "timeout" => FailureClass::Timeout,
        "config" => FailureClass::Config,
        "harness" => FailureClass::Harness,
        _ => FailureClass::Product,
    }
}

/// Replaces `{{ with.NAME }}` in a block's steps by the values the `use:` gave. A scalar
/// that is only the reference takes the value as it is (a list stays a list); elsewhere
/// the value is spliced into the text.
fn substitute(node: &Node, values: &BTreeMap<String, Node>, block: &str, p: &mut Problems) -> Node {
    match &node.kind {
        NodeKind::Scalar { value, .. } => {
            if !value.contains("with.") {
                return node.clone();
            }
            if let Some(c) = WITH_REF.captures(value)
                && c.get(0).is_some_and(|m| m.as_str() == value.trim())
            {
                let name = &c[1];
                return match values.get(name) {
                    Some(v) => v.clone(),
                    None => {
                        unknown_param(node, name, values, block, p);
                        node.clone()
                    }
                };
            }
            let mut failed = false;
            let replaced =
                WITH_REF.replace_all(value, |c: &regex::Captures| match values.get(&c[1]) {
                    Some(v) if v.as_str().is_some() || v.is_null() => {
                        v.as_str().unwrap_or_default().to_string()
                    }
                    Some(v) => {
                        p.error(
                            &v.span,
                            format!(
                                "parameter `{}` is spliced into text, so it must be a single value",
                                &c[1]
                            ),
                        );
                        failed = true;
                        String::new()
                    }
                    None => {
                        unknown_param(node, &c[1], values, block, p);
                        failed = true;
                        String::new()
                    }
                });
            if failed {
                return node.clone();
            }
            let mut out = Node::scalar(node.span.clone(), &replaced);
            if let NodeKind::Scalar { plain, .. } = &mut out.kind {
                *plain = matches!(node.kind, NodeKind::Scalar { plain: true, .. });
            }
            out
        }
        NodeKind::Seq(items) => {
            let items: Vec<Node> = items
                .iter()
                .map(|n| substitute(n, values, block, p))
                .collect();
            let mut out = node.clone();
            out.kind = NodeKind::Seq(items);
            out
        }
        NodeKind::Map(entries) => {
            let entries = entries
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, values, block, p)))
                .collect();
            Node::map(node.span.clone(), entries)
        }
    }
}

fn unknown_param(
    node: &Node,
    name: &str,
    values: &BTreeMap<String, Node>,
    block: &str,
    p: &mut Problems,
) {
    let names: Vec<&str> = values.keys().map(String::as_str).collect();
    let problem = p.error(
        &node.span,
        format!("block `{block}` refers to `with.{name}`, which is not one of its `params:`"),
    );
    match did_you_mean(name, &names) {
        Some(close) => problem.hint(format!("did you mean `with.{close}`?")),
        None => problem.hint("declare it under `params:` at the top of the block"),
    };
}

fn default_name(action: &Action) -> String {
    match action {
        Action::Power(PowerAction::On) => "power on".into(),
        Action::Power(PowerAction::Off) => "power off".into(),
        Action::Power(PowerAction::Cycle) => "power cycle".into(),
        Action::Power(PowerAction::Expect(PowerState::On)) => "power is on".into(),
        Action::Power(PowerAction::Expect(PowerState::Off)) => "power is off".into(),
        Action::Keys(keys) => {
            let names: Vec<String> = keys
                .iter()
                .map(|k| {
                    if k.times > 1 {
                        format!("{} x{}", k.key, k.times)
                    } else {
                        k.key.clone()
                    }
                })
                .collect();
            format!("keys {}", names.join(", "))
        }
        Action::Text { secret: true, .. } => "type secret".into(),
        Action::Text { .. } => "type text".into(),
        Action::Expect(e) => {
            let names: Vec<&str> = e.any_of.iter().map(|o| o.name.as_str()).collect();
            let on = if e.source == Source::Console {
                "console"
            } else {
                "screen"
            };
            format!("expect {on}: {}", names.join(" | "))
        }
        Action::ScreenCheck(_) => "screen check".into(),
        Action::Shell(s) => format!("shell {}", s.program),
        Action::Tpm(_) => "tpm checks".into(),
        Action::Tenant(op) => match op {
            TenantOp::ResetRecord { .. } => "tenant reset record",
            TenantOp::WaitProfileAssigned { .. } => "tenant profile assigned",
            TenantOp::SetGroupTag { .. } => "tenant set group tag",
            TenantOp::AssignUser { .. } => "tenant assign user",
            TenantOp::UnassignUser => "tenant unassign user",
            TenantOp::Compliance { .. } => "tenant compliance",
            TenantOp::MatchQr => "tenant matches QR",
            TenantOp::EnrollmentState { .. } => "tenant enrollment state",
        }
        .into(),
        Action::Wait(Wait::Fixed(d)) => format!("wait {}", super::duration::format_duration(*d)),
        Action::Wait(Wait::Until { .. }) => "wait until".into(),
        Action::Collect(_) => "collect diagnostics".into(),
    }
}
