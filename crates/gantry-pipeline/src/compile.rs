//! The compiler proper: the expanded configuration tree → a [`Plan`].
//!
//! - A job key set to `null` is unset before `default` applies, as in GitLab.
//! - `only` defaults to `[branches, tags]` unless there are `workflow:rules`; refs may name a project
//!   (`REF@group/project`); `only` needs all of its keys, `except` any of them.
//! - `needs` is flattened (anchors give nested lists) and matrix-filtered (`$[[ matrix.X ]]`),
//!   names matrix instances by full name, and may be optional.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::context::{Context, Sources, predefined_variables};
use crate::diag::{Diagnostic, Diags, Severity, hint};
use crate::gate::{Condition, Metric};
use crate::load::{self, GLOBAL_KEYWORDS, is_global, string_list};
use crate::plan::{
    AllowFailure, Artifacts, ArtifactsWhen, Cache, CacheKey, CachePolicy, Environment, Image, Job,
    Need, Plan, Retry, Variable, When,
};
use crate::yaml::{Entry, Map, Node, Pos, Value};
use crate::{duration, expr, vars};

/// Job keywords GitLab knows.
pub const JOB_KEYWORDS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "gate",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "release",
    "resource_group",
    "retry",
    "rollback_script",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "verify",
    "when",
    "description",
];

/// Keywords allowed under `default`.
pub const DEFAULT_KEYWORDS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

/// The result of compiling: the plan (when there are no errors), the expanded tree, and every diagnostic.
#[derive(Debug)]
pub struct Compiled {
    /// The plan; `None` when there were errors.
    pub plan: Option<Plan>,
    /// The configuration after includes, `extends`, `!reference` and `default`, for `--preview`.
    pub expanded: Node,
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
    /// Set when `workflow:rules` decided that no pipeline runs; holds the reason.
    pub workflow_skipped: Option<String>,
    /// The top-level `notify:` rules (a Gantry extension), values unexpanded.
    pub notify: Vec<crate::notify::Rule>,
}

impl Compiled {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Compiles the pipeline `ctx.file` read from `sources`.
#[must_use]
pub fn compile(sources: &dyn Sources, ctx: &Context) -> Compiled {
    let mut diags = Diags::default();
    let mut root = load::load(sources, ctx, &mut diags);
    let mut c = Compiler {
        ctx,
        sources,
        diags,
        predefined: predefined_variables(ctx),
        exprs: HashMap::new(),
        workflow_rules: false,
    };
    drop_null_keys(&mut root);
    c.apply_defaults(&mut root);
    let (plan, workflow_skipped) = c.plan(&root);
    let notify = root
        .as_map()
        .and_then(|m| m.get("notify"))
        .filter(|n| n.as_map().is_none())
        .map(|n| crate::notify::compile(n, &mut c.diags))
        .unwrap_or_default();
    let plan = if c.diags.has_errors() {
        None
    } else {
        Some(plan)
    };
    let files = c.diags.files;
    let mut diagnostics = c.diags.list;
    // Report in file order (the main file first), then by position.
    diagnostics.sort_by_key(|d| (files.iter().position(|f| *f == d.file), d.line, d.column));
    Compiled {
        plan,
        expanded: root,
        diagnostics,
        workflow_skipped,
        notify,
    }
}

struct Compiler<'a> {
    ctx: &'a Context,
    sources: &'a dyn Sources,
    diags: Diags,
    predefined: Vec<Variable>,
    exprs: HashMap<String, std::rc::Rc<Result<expr::Expr, expr::ExprError>>>,
    /// Whether the pipeline has `workflow:rules`, which drop `only`'s default (`branches`, `tags`).
    workflow_rules: bool,
}

/// A job before `parallel` expansion and rules, with its parsed keywords.
struct Draft<'n> {
    name: String,
    node: &'n Node,
    map: &'n Map,
}

/// One instance of a job after `parallel`: its name, its matrix variables, and
/// `(CI_NODE_INDEX, CI_NODE_TOTAL)`.
type Instance = (String, Vec<Variable>, Option<(u32, u32)>);

/// The pipeline-level variables, indexed once for every job's rules.
struct PlanIndex<'a> {
    predefined: vars::VarIndex<'a>,
    global: vars::VarIndex<'a>,
    cli: vars::VarIndex<'a>,
}

/// What rules decided for one job instance.
struct RuleOutcome {
    /// The rule's `when`, if it has one.
    when: Option<When>,
    allow_failure: Option<AllowFailure>,
    variables: Vec<Variable>,
    rule_needs: Option<Node>,
    start_in: Option<Duration>,
    reason: String,
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// A job key set to `null` is a key not set, as in GitLab (an unspecified entry): `null` drops what
/// `extends` brought in, and `default` then applies as if the key were absent. `script: null` stays,
/// to be reported as a blank script.
fn drop_null_keys(root: &mut Node) {
    let Some(map) = root.as_map_mut() else { return };
    for e in &mut map.entries {
        if is_hidden(&e.key) || is_global(&e.key, &e.value) {
            continue;
        }
        if let Some(job) = e.value.as_map_mut() {
            job.entries
                .retain(|x| !x.value.is_null() || x.key == "script");
        }
    }
}

impl Compiler<'_> {
    /// Copies `default` (and the deprecated top-level equivalents) into every job that lacks them,
    /// honouring `inherit:default`.
    fn apply_defaults(&mut self, root: &mut Node) {
        let Some(map) = root.as_map_mut() else { return };
        let mut defaults = Map::default();
        for key in [
            "image",
            "services",
            "cache",
            "before_script",
            "after_script",
        ] {
            if let Some(e) = map.entry(key) {
                defaults.insert(key.to_string(), e.key_pos, e.value.clone());
            }
        }
        if let Some(d) = map.get("default") {
            match d.as_map() {
                Some(dm) => {
                    for e in &dm.entries {
                        if !self.known_key(e, DEFAULT_KEYWORDS, |k, hint| {
                            format!("unknown keyword `{k}` in `default`{hint}")
                        }) {
                            continue;
                        }
                        defaults.insert(e.key.clone(), e.key_pos, e.value.clone());
                    }
                }
                None if d.is_null() => {}
                None => self.diags.error(d.pos, "`default` must be a mapping"),
            }
        }
        if defaults.entries.is_empty() {
            return;
        }
        for e in &mut map.entries {
            if is_hidden(&e.key) || is_global(&e.key, &e.value) {
                continue;
            }
            let Some(job) = e.value.as_map_mut() else {
                continue;
            };
            let inherit = job
                .get("inherit")
                .and_then(Node::as_map)
                .and_then(|m| m.get("default"))
                .cloned();
            for d in &defaults.entries {
                let inherited = match inherit.as_ref().map(|n| &n.value) {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(Value::Seq(list)) => list.iter().any(|x| x.as_str() == Some(&d.key)),
                    Some(_) => true,
                };
                if inherited && !job.contains(&d.key) {
                    job.entries.push(d.clone());
                }
            }
        }
    }

    fn plan(&mut self, root: &Node) -> (Plan, Option<String>) {
        let mut plan = Plan {
            predefined: self.predefined.clone(),
            cli_variables: self.ctx.cli_variables.clone(),
            ..Plan::default()
        };
        let Some(map) = root.as_map() else {
            return (plan, None);
        };
        plan.stages = self.stages(map);
        plan.variables = map
            .get("variables")
            .map(|v| self.variables(v, "variables"))
            .unwrap_or_default();

        // workflow:rules
        let mut skipped = None;
        self.workflow_rules = map
            .get("workflow")
            .and_then(Node::as_map)
            .is_some_and(|w| w.contains("rules"));
        if let Some(wf) = map.get("workflow") {
            match wf.as_map() {
                Some(wm) => {
                    for e in &wm.entries {
                        if !["rules", "name", "auto_cancel"].contains(&e.key.as_str()) {
                            self.diags.error(
                                e.key_pos,
                                format!("unknown keyword `{}` in `workflow`", e.key),
                            );
                        }
                    }
                    if let Some(rules) = wm.get("rules") {
                        if rules.as_seq().is_some_and(<[Node]>::is_empty) {
                            self.diags
                                .error(rules.pos, "`workflow:rules` can't be blank");
                        }
                        let base: Vec<Variable> = self
                            .predefined
                            .iter()
                            .chain(&plan.variables)
                            .chain(&self.ctx.cli_variables)
                            .cloned()
                            .collect();
                        let resolver = vars::Resolver::new(&base.iter().collect::<Vec<_>>());
                        match self.rules(rules, &resolver, true) {
                            Some(o)
                                if o.when
                                    .is_some_and(|w| w != When::OnSuccess && w != When::Always) =>
                            {
                                skipped = Some(format!("workflow:rules: {}", o.reason));
                            }
                            Some(o) => plan.variables.extend(o.variables),
                            None => skipped = Some("workflow:rules: no rule matched".into()),
                        }
                    }
                }
                None => self.diags.error(wf.pos, "`workflow` must be a mapping"),
            }
        }

        // Jobs
        let mut drafts = Vec::new();
        for e in &map.entries {
            if is_global(&e.key, &e.value) || is_hidden(&e.key) {
                if !is_hidden(&e.key) {
                    self.check_global(e.key.as_str(), &e.value);
                }
                continue;
            }
            match e.value.as_map() {
                Some(m) => {
                    self.check_keywords(&e.key, m);
                    drafts.push(Draft {
                        name: e.key.clone(),
                        node: &e.value,
                        map: m,
                    });
                }
                None => {
                    let hint = hint(&e.key, GLOBAL_KEYWORDS);
                    self.diags.error(e.key_pos, format!("`{}` is not a keyword, so it is a job, and a job must be a mapping{hint}", e.key));
                }
            }
        }
        if skipped.is_some() {
            return (plan, skipped);
        }

        let mut jobs: Vec<(Job, Option<Node>, Pos)> = Vec::new();
        let index = PlanIndex {
            predefined: vars::index(&plan.predefined),
            global: vars::index(&plan.variables),
            cli: vars::index(&plan.cli_variables),
        };
        let mut excluded: HashSet<String> = HashSet::new();
        let mut all_names: HashMap<String, Vec<String>> = HashMap::new();
        // Each instance's `parallel:matrix` values, for `needs:parallel:matrix`.
        let mut matrix_of: HashMap<String, Vec<Variable>> = HashMap::new();
        for d in &drafts {
            let instances = self.parallel(d);
            let names: Vec<String> = instances.iter().map(|(n, _, _)| n.clone()).collect();
            all_names.insert(d.name.clone(), names);
            for (name, matrix_vars, node) in instances {
                if !matrix_vars.is_empty() {
                    matrix_of.insert(name.clone(), matrix_vars.clone());
                }
                match self.job(d, &name, matrix_vars, node, &plan, &index) {
                    Some((job, needs_node)) => jobs.push((job, needs_node, d.node.pos)),
                    None => {
                        excluded.insert(name);
                    }
                }
            }
        }
        if drafts.is_empty() && !self.diags.has_errors() {
            self.diags.error(
                root.pos,
                "the pipeline has no visible jobs (jobs whose names start with `.` are hidden)",
            );
        }
        // Stage index and plan order.
        for (job, _, pos) in &mut jobs {
            match plan.stages.iter().position(|s| *s == job.stage) {
                Some(i) => job.stage_index = i,
                None => {
                    let hint = hint(
                        &job.stage,
                        &plan.stages.iter().map(String::as_str).collect::<Vec<_>>(),
                    );
                    let at = job_key_pos(root, &job.base_name, "stage").unwrap_or(*pos);
                    self.diags.follow_on(
                        at,
                        format!(
                            "`{}`: stage `{}` is not defined in `stages` ({}){hint}",
                            job.base_name,
                            job.stage,
                            plan.stages.join(", ")
                        ),
                    );
                }
            }
        }
        jobs.sort_by_key(|(j, _, _)| j.stage_index);
        let stage_of: HashMap<String, usize> = jobs
            .iter()
            .map(|(j, _, _)| (j.name.clone(), j.stage_index))
            .collect();
        for (job, needs_node, pos) in &mut jobs {
            if let Some(n) = needs_node.take() {
                job.needs =
                    Some(self.needs(root, job, &n, &all_names, &excluded, &stage_of, &matrix_of));
            }
            self.dependencies(root, job, &all_names, &stage_of, *pos);
        }
        plan.jobs = jobs.into_iter().map(|(j, _, _)| j).collect();
        self.check_cycles(root, &plan);
        (plan, None)
    }

    fn check_global(&mut self, key: &str, value: &Node) {
        match key {
            "stages" if value.as_seq().is_none() && !value.is_null() => self
                .diags
                .error(value.pos, "`stages` must be an array of stage names"),
            "variables" if value.as_map().is_none() && !value.is_null() => {
                self.diags.error(value.pos, "`variables` must be a mapping")
            }
            _ => {}
        }
    }

    /// Whether `e`'s key is one of `known`; if not, the error `unknown(key, hint)` at the key.
    fn known_key(
        &mut self,
        e: &Entry,
        known: &[&str],
        unknown: impl FnOnce(&str, &str) -> String,
    ) -> bool {
        if known.contains(&e.key.as_str()) {
            return true;
        }
        let hint = hint(&e.key, known);
        self.diags.error(e.key_pos, unknown(&e.key, &hint));
        false
    }

    fn check_keywords(&mut self, job: &str, m: &Map) {
        for e in &m.entries {
            self.known_key(e, JOB_KEYWORDS, |k, hint| {
                format!("`{job}`: unknown keyword `{k}`{hint}")
            });
        }
        if !m.contains("script")
            && !m.contains("trigger")
            && !m.contains("run")
            && !m.contains("gate")
        {
            self.diags.follow_on(
                m.entries.first().map_or(Pos::default(), |e| e.key_pos),
                format!("`{job}`: a job needs `script` (or `trigger`, or `gate`)"),
            );
        }
        if let Some(e) = m.entry("script") {
            let blank = match &e.value.value {
                Value::Null => true,
                Value::Str(s) => s.trim().is_empty(),
                Value::Seq(items) => items.is_empty(),
                _ => false,
            };
            if blank {
                self.diags
                    .error(e.key_pos, format!("`{job}`: `script` can't be blank"));
            }
        }
        if job.chars().count() > 255 {
            self.diags.error(
                m.entries.first().map_or(Pos::default(), |e| e.key_pos),
                format!("`{job}`: a job name is at most 255 characters long"),
            );
        }
        if let Some(e) = m.entry("start_in") {
            // GitLab: `start_in` belongs to `when: delayed`, and in a rule when the job has rules.
            if m.contains("rules") {
                self.diags.error(
                    e.key_pos,
                    format!("`{job}`: `start_in` may not be used with `rules`; set it in the rule"),
                );
            } else if m.get("when").and_then(Node::as_str) != Some("delayed") {
                self.diags.error(
                    e.key_pos,
                    format!("`{job}`: `start_in` is only for `when: delayed`"),
                );
            }
        }
        self.check_types(job, m);
    }

    /// GitLab's type checks of job keywords that the rest of the compiler reads leniently: each
    /// keyword's value must have the type GitLab's CI YAML reference gives it.
    // The checks inside the arms report as they go; as match guards they would hide that.
    #[allow(clippy::too_many_lines, clippy::collapsible_match)]
    fn check_types(&mut self, job: &str, m: &Map) {
        use Shape::{
            Bool, BoolOrStrList, Int, IntOrIntList, Map as MapS, Str, StrList, StrOrInt,
            StrOrStrList,
        };
        for e in &m.entries {
            let n = &e.value;
            match e.key.as_str() {
                "stage" | "resource_group" | "coverage" | "manual_confirmation" | "description" => {
                    self.shape(n, Str, job, &e.key);
                }
                "when" => {
                    if self.shape(n, Str, job, "when") {
                        let s = n.as_str().unwrap_or_default();
                        if s == "never" {
                            self.diags.error(
                                n.pos,
                                format!("`{job}`: `when: never` is only allowed in `rules` and `workflow:rules`; a job's `when` should be one of: on_success, on_failure, always, manual, delayed"),
                            );
                        } else if parse_when(s).is_none() {
                            self.diags
                                .error(n.pos, format!("`{job}`: unknown `when` value `{s}`"));
                        }
                    }
                }
                "interruptible" => {
                    self.shape(n, Bool, job, "interruptible");
                }
                "tags" => {
                    if self.shape(n, StrList, job, "tags")
                        && n.as_seq().is_some_and(|t| t.len() >= 50)
                    {
                        self.diags
                            .error(n.pos, format!("`{job}`: `tags` must be fewer than 50"));
                    }
                }
                "dependencies" => {
                    self.shape(n, StrList, job, "dependencies");
                }
                "timeout" | "start_in" => {
                    self.shape(n, StrOrInt, job, &e.key);
                }
                "allow_failure" => {
                    if let Some(am) = n.as_map() {
                        for x in &am.entries {
                            if x.key == "exit_codes" {
                                self.shape(&x.value, IntOrIntList, job, "allow_failure:exit_codes");
                            } else {
                                self.diags.error(
                                    x.key_pos,
                                    format!("`{job}`: unknown `allow_failure` keyword `{}`", x.key),
                                );
                            }
                        }
                    }
                }
                "retry" => {
                    if let Some(rm) = n.as_map() {
                        for x in &rm.entries {
                            match x.key.as_str() {
                                "max" => {
                                    self.shape(&x.value, Int, job, "retry:max");
                                }
                                "when" => {
                                    self.shape(&x.value, StrOrStrList, job, "retry:when");
                                }
                                "exit_codes" => {
                                    self.shape(&x.value, IntOrIntList, job, "retry:exit_codes");
                                }
                                other => self.diags.error(
                                    x.key_pos,
                                    format!("`{job}`: unknown `retry` keyword `{other}`"),
                                ),
                            }
                        }
                    }
                }
                "artifacts" => {
                    let is_map = self.shape(n, MapS, job, "artifacts");
                    if let Some(am) = n.as_map().filter(|_| is_map) {
                        self.key_shapes(am, job, "artifacts", ARTIFACTS_SHAPES);
                    }
                }
                "cache" => {
                    for c in flatten_seq(n) {
                        let Some(cm) = c.as_map() else { continue };
                        self.key_shapes(cm, job, "cache", CACHE_SHAPES);
                        if let Some(key) = cm.get("key").filter(|k| k.as_map().is_none()) {
                            self.shape(key, StrOrInt, job, "cache:key");
                        }
                    }
                }
                "environment" => {
                    // `environment()` reports the types other than a string or a mapping.
                    if let Some(em) = n.as_map() {
                        self.key_shapes(em, job, "environment", ENVIRONMENT_SHAPES);
                    }
                }
                "image" => {
                    if let Some(im) = n.as_map() {
                        self.image_keys(im, job, "image");
                    }
                }
                "services" => {
                    for svc in n.as_seq().unwrap_or_default() {
                        if let Some(sm) = svc.as_map() {
                            self.image_keys(sm, job, "services");
                        }
                    }
                }
                "inherit" => {
                    if self.shape(n, MapS, job, "inherit") {
                        for x in n.as_map().map(|a| a.entries.as_slice()).unwrap_or_default() {
                            if ["default", "variables"].contains(&x.key.as_str()) {
                                self.shape(
                                    &x.value,
                                    BoolOrStrList,
                                    job,
                                    &format!("inherit:{}", x.key),
                                );
                            } else {
                                self.diags.error(
                                    x.key_pos,
                                    format!("`{job}`: unknown `inherit` keyword `{}`", x.key),
                                );
                            }
                        }
                    }
                }
                "only" | "except" => match &n.value {
                    Value::Seq(_) => {
                        self.shape(n, StrList, job, &e.key);
                    }
                    Value::Map(pm) => {
                        self.key_shapes(pm, job, &e.key, ONLY_SHAPES);
                    }
                    _ => self.diags.error(
                        n.pos,
                        format!(
                            "`{job}`: `{}` must be an array of conditions or a mapping, not {}",
                            e.key,
                            a_kind(n)
                        ),
                    ),
                },
                "rules" => {
                    if n.as_seq().is_some_and(<[Node]>::is_empty) {
                        self.diags
                            .error(n.pos, format!("`{job}`: `rules` can't be blank"));
                    }
                    for r in flatten_seq(n) {
                        if let Some(rm) = r.as_map() {
                            self.rule_types(rm, job);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks the types of one rule's keywords.
    fn rule_types(&mut self, rule: &Map, job: &str) {
        self.key_shapes(rule, job, "rules", RULE_SHAPES);
        for x in &rule.entries {
            if !["changes", "exists"].contains(&x.key.as_str()) {
                continue;
            }
            let key = format!("rules:{}", x.key);
            match x.value.as_map() {
                Some(m) => self.key_shapes(m, job, &key, RULE_PATHS_SHAPES),
                None => {
                    self.shape(&x.value, Shape::StrList, job, &key);
                }
            }
        }
    }

    /// Checks the type of the keywords of an image or a service written as a mapping.
    fn image_keys(&mut self, m: &Map, job: &str, what: &str) {
        self.key_shapes(m, job, what, IMAGE_SHAPES);
    }

    /// Checks the keywords of `m` that `shapes` names (keywords, and the shape of their values),
    /// reporting them as `what:keyword`; the other keywords are left alone.
    fn key_shapes(&mut self, m: &Map, job: &str, what: &str, shapes: &[(&[&str], Shape)]) {
        for x in &m.entries {
            let Some((_, shape)) = shapes
                .iter()
                .find(|(keys, _)| keys.contains(&x.key.as_str()))
            else {
                continue;
            };
            self.shape(&x.value, *shape, job, &format!("{what}:{}", x.key));
        }
    }

    /// Whether `n` has `shape`; reports it at `n` when not.
    fn shape(&mut self, n: &Node, shape: Shape, job: &str, key: &str) -> bool {
        fn is_str(x: &Node) -> bool {
            matches!(x.value, Value::Str(_))
        }
        fn is_int(x: &Node) -> bool {
            matches!(x.value, Value::Int(_))
        }
        fn is_bool(x: &Node) -> bool {
            matches!(x.value, Value::Bool(_))
        }
        // (the value is right, what it must be, what the items of a list must be)
        type ItemCheck = Option<fn(&Node) -> bool>;
        let (ok, what, item): (bool, &str, ItemCheck) = match shape {
            Shape::Str => (is_str(n), "a string", None),
            Shape::Bool => (is_bool(n), "a boolean value", None),
            Shape::Int => (is_int(n), "an integer", None),
            Shape::Map => (n.as_map().is_some(), "a mapping", None),
            Shape::StrList => (false, "an array of strings", Some(is_str)),
            Shape::StrOrStrList => (is_str(n), "a string or an array of strings", Some(is_str)),
            Shape::StrOrInt => (is_str(n) || is_int(n), "a string", None),
            Shape::IntOrIntList => (
                is_int(n),
                "an integer or an array of integers",
                Some(is_int),
            ),
            Shape::BoolOrStrList => (
                is_bool(n),
                "a boolean value or an array of strings",
                Some(is_str),
            ),
        };
        let bad_item = match (item, n.as_seq()) {
            (Some(f), Some(items)) => items.iter().find(|x| !f(x)),
            _ => None,
        };
        let ok = ok || (item.is_some() && n.as_seq().is_some() && bad_item.is_none());
        if !ok {
            let not = match bad_item {
                Some(x) => format!("an array holding {}", a_kind(x)),
                None => a_kind(n).to_string(),
            };
            self.diags
                .error(n.pos, format!("`{job}`: `{key}` must be {what}, not {not}"));
        }
        ok
    }

    fn stages(&mut self, map: &Map) -> Vec<String> {
        let mut stages = vec![".pre".to_string()];
        match map.get("stages") {
            Some(s) if s.as_seq().is_some() => {
                for item in s.as_seq().unwrap_or_default() {
                    match item.scalar_string() {
                        Some(name) if name != ".pre" && name != ".post" => {
                            if !stages.contains(&name) {
                                stages.push(name);
                            }
                        }
                        Some(_) => {}
                        None => self.diags.error(item.pos, "a stage name must be a string"),
                    }
                }
            }
            _ => stages.extend(["build", "test", "deploy"].map(String::from)),
        }
        stages.push(".post".into());
        stages
    }

    /// Parses a `variables` mapping.
    fn variables(&mut self, n: &Node, what: &str) -> Vec<Variable> {
        let Some(m) = n.as_map() else {
            if !n.is_null() {
                self.diags
                    .error(n.pos, format!("`{what}` must be a mapping"));
            }
            return Vec::new();
        };
        let mut out = Vec::with_capacity(m.entries.len());
        for e in &m.entries {
            if e.key.is_empty() || !e.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.diags.error(
                    e.key_pos,
                    format!("`{}` is not a valid variable name", e.key),
                );
                continue;
            }
            let (value, expand) = match &e.value.value {
                Value::Map(vm) => {
                    for k in vm.entries.iter().map(|x| x.key.as_str()) {
                        if !["value", "description", "expand", "options"].contains(&k) {
                            self.diags.error(
                                e.value.pos,
                                format!("variable `{}`: unknown key `{k}`", e.key),
                            );
                        }
                    }
                    let v = vm.get("value").and_then(Node::scalar_string);
                    let expand =
                        !matches!(vm.get("expand").map(|x| &x.value), Some(Value::Bool(false)));
                    (v.unwrap_or_default(), expand)
                }
                Value::Seq(_) => {
                    self.diags.error(
                        e.value.pos,
                        format!(
                            "variable `{}` must be a string, a number or a mapping with `value`",
                            e.key
                        ),
                    );
                    continue;
                }
                _ => (e.value.scalar_string().unwrap_or_default(), true),
            };
            out.push(Variable {
                key: e.key.clone(),
                value,
                expand,
                masked: false,
            });
        }
        out
    }

    /// Expands `parallel` into instances: `(name, matrix variables, the job node)`.
    fn parallel(&mut self, d: &Draft<'_>) -> Vec<Instance> {
        let Some(p) = d.map.get("parallel") else {
            return vec![(d.name.clone(), Vec::new(), None)];
        };
        match &p.value {
            Value::Int(n) => {
                if !(1..=200).contains(n) {
                    self.diags.error(
                        p.pos,
                        format!("`{}`: `parallel` must be between 1 and 200", d.name),
                    );
                    return vec![(d.name.clone(), Vec::new(), None)];
                }
                let total = u32::try_from(*n).unwrap_or(1);
                (1..=total)
                    .map(|i| (format!("{} {i}/{n}", d.name), Vec::new(), Some((i, total))))
                    .collect()
            }
            Value::Map(pm) => {
                let Some(matrix) = pm.get("matrix").and_then(Node::as_seq) else {
                    self.diags.error(
                        p.pos,
                        format!(
                            "`{}`: `parallel` must be a number or have a `matrix` array",
                            d.name
                        ),
                    );
                    return vec![(d.name.clone(), Vec::new(), None)];
                };
                let combos = self.matrix(&d.name, matrix);
                if combos.len() > 200 {
                    self.diags.error(
                        p.pos,
                        format!(
                            "`{}`: `parallel:matrix` makes {} jobs; at most 200 are allowed",
                            d.name,
                            combos.len()
                        ),
                    );
                    return vec![(d.name.clone(), Vec::new(), None)];
                }
                let total = u32::try_from(combos.len()).unwrap_or(1);
                combos
                    .into_iter()
                    .zip(1..)
                    .map(|(vars, i)| {
                        let vals: Vec<&str> = vars.iter().map(|v| v.value.as_str()).collect();
                        (
                            format!("{}: [{}]", d.name, vals.join(", ")),
                            vars,
                            Some((i, total)),
                        )
                    })
                    .collect()
            }
            _ => {
                self.diags.error(
                    p.pos,
                    format!(
                        "`{}`: `parallel` must be a number or have a `matrix` array",
                        d.name
                    ),
                );
                vec![(d.name.clone(), Vec::new(), None)]
            }
        }
    }

    /// Every combination of a `parallel:matrix`.
    fn matrix(&mut self, job: &str, matrix: &[Node]) -> Vec<Vec<Variable>> {
        let mut out = Vec::new();
        for entry in matrix {
            let Some(m) = entry.as_map() else {
                self.diags.error(
                    entry.pos,
                    format!("`{job}`: each `parallel:matrix` entry must be a mapping"),
                );
                continue;
            };
            let mut combos: Vec<Vec<Variable>> = vec![Vec::new()];
            for e in &m.entries {
                let values: Vec<String> = match &e.value.value {
                    Value::Seq(items) => items.iter().filter_map(Node::scalar_string).collect(),
                    _ => e.value.scalar_string().into_iter().collect(),
                };
                let mut next = Vec::with_capacity(combos.len() * values.len());
                for c in &combos {
                    for v in &values {
                        let mut c2 = c.clone();
                        c2.push(Variable::new(e.key.clone(), v.clone()));
                        next.push(c2);
                    }
                }
                combos = next;
                if combos.len() > 10_000 {
                    break;
                }
            }
            out.extend(combos);
        }
        out
    }

    /// Builds one job instance. `None` when its rules exclude it.
    fn job(
        &mut self,
        d: &Draft<'_>,
        name: &str,
        matrix_vars: Vec<Variable>,
        node_index: Option<(u32, u32)>,
        plan: &Plan,
        index: &PlanIndex<'_>,
    ) -> Option<(Job, Option<Node>)> {
        let mut job = self.job_keywords(d, name, matrix_vars, node_index);
        // `inherit:variables`
        if let Some(inherit) = d
            .map
            .get("inherit")
            .and_then(Node::as_map)
            .and_then(|i| i.get("variables"))
        {
            let mut vs = not_inherited(&inherit.value, plan, &job.variables);
            vs.append(&mut job.variables);
            job.variables = vs;
        }
        let written = job.environment.clone();
        if let Some(env) = &mut job.environment {
            expand_environment(env, plan, &job.name, &job.stage, job.node, &job.variables);
        }
        job.predefined = job_predefined(&job);
        let before_rules = job.variables.len();
        let needs_node = self.job_when(d, &mut job, index)?;
        // `rules:variables` are job variables too: the environment's name and URL see them.
        if let Some(mut env) = written.filter(|_| job.variables.len() > before_rules) {
            expand_environment(
                &mut env,
                plan,
                &job.name,
                &job.stage,
                job.node,
                &job.variables,
            );
            job.environment = Some(env);
            job.predefined = job_predefined(&job);
        }
        self.job_dependencies(d, &mut job);
        Some((job, needs_node))
    }

    /// A job with what its keywords say, before `inherit`, `rules` and `only`/`except`: its
    /// variables are its own and the matrix's; `when` is `on_success`, no failure is allowed.
    fn job_keywords(
        &mut self,
        d: &Draft<'_>,
        name: &str,
        matrix_vars: Vec<Variable>,
        node_index: Option<(u32, u32)>,
    ) -> Job {
        let m = d.map;
        let base = &d.name;
        let mut variables = m
            .get("variables")
            .map(|v| self.variables(v, &format!("{base}: variables")))
            .unwrap_or_default();
        variables.extend(matrix_vars);
        let stage = m
            .get("stage")
            .and_then(Node::scalar_string)
            .unwrap_or_else(|| "test".into());
        Job {
            name: name.to_string(),
            base_name: base.clone(),
            stage,
            stage_index: 0,
            before_script: self.script(m.get("before_script"), base, "before_script"),
            script: self.script(m.get("script"), base, "script"),
            after_script: self.script(m.get("after_script"), base, "after_script"),
            predefined: Vec::new(),
            variables,
            when: When::OnSuccess,
            start_in: None,
            allow_failure: AllowFailure::Bool(false),
            needs: None,
            dependencies: None,
            artifacts: m.get("artifacts").and_then(|a| self.artifacts(a, base)),
            cache: m
                .get("cache")
                .map(|c| self.cache(c, base))
                .unwrap_or_default(),
            retry: m
                .get("retry")
                .map(|r| self.retry(r, base))
                .unwrap_or_default(),
            timeout: m
                .get("timeout")
                .and_then(|t| self.duration(t, base, "timeout")),
            node: node_index,
            environment: m.get("environment").and_then(|e| self.environment(e, base)),
            coverage: m.get("coverage").and_then(|c| self.coverage(c, base)),
            resource_group: m.get("resource_group").and_then(Node::scalar_string),
            interruptible: matches!(
                m.get("interruptible").map(|n| &n.value),
                Some(Value::Bool(true))
            ),
            tags: m.get("tags").map(string_list).unwrap_or_default(),
            image: m.get("image").and_then(|i| self.image(i, base, false)),
            services: self.services(m.get("services"), base),
            trigger: m.contains("trigger"),
            reason: String::new(),
            gate: m
                .get("gate")
                .map(|g| self.gate(g, base))
                .unwrap_or_default(),
            verify: m.get("verify").and_then(|v| {
                crate::verify::compile(v, base, m.contains("environment"), &mut self.diags)
            }),
            rollback_script: self.script(m.get("rollback_script"), base, "rollback_script"),
        }
    }

    /// Sets `when`, `allow_failure`, `start_in` and the reason of `job` from its keywords and its
    /// `rules` (which may add variables and replace `needs`), or its `only`/`except`. `None` when
    /// they exclude it; else the `needs` to use.
    fn job_when(
        &mut self,
        d: &Draft<'_>,
        job: &mut Job,
        index: &PlanIndex<'_>,
    ) -> Option<Option<Node>> {
        let m = d.map;
        let base = &d.name;
        // `check_types` reported a `when` that is not a string or not a job's `when`.
        let job_when = m.get("when").and_then(Node::as_str).and_then(parse_when);
        let job_allow = m
            .get("allow_failure")
            .and_then(|a| self.allow_failure(a, base));
        let job_start_in = m
            .get("start_in")
            .and_then(|t| self.duration(t, base, "start_in"));

        // Variables visible to rules: predefined, global, job (incl. matrix), CLI.
        let visible = vars::Resolver::layered(vec![
            vars::Layer::Index(&index.predefined),
            vars::Layer::List(&job.predefined),
            vars::Layer::Index(&index.global),
            vars::Layer::List(&job.variables),
            vars::Layer::Index(&index.cli),
        ]);
        let mut needs_node = m.get("needs").cloned();
        if let Some(rules) = m.get("rules") {
            if m.contains("only") || m.contains("except") {
                self.diags.error(
                    rules.pos,
                    format!("`{base}`: `rules` cannot be used with `only` or `except`"),
                );
            }
            let outcome = self.rules(rules, &visible, false)?;
            job.when = outcome.when.or(job_when).unwrap_or(When::OnSuccess);
            job.allow_failure = outcome
                .allow_failure
                .or(job_allow)
                .unwrap_or(AllowFailure::Bool(false));
            job.variables.extend(outcome.variables);
            job.start_in = outcome.start_in.or(job_start_in);
            if let Some(n) = outcome.rule_needs {
                needs_node = Some(n);
            }
            job.reason = outcome.reason;
        } else {
            if !self.only_except(m, base, &visible) {
                return None;
            }
            job.when = job_when.unwrap_or(When::OnSuccess);
            job.allow_failure = job_allow.unwrap_or(AllowFailure::Bool(job.when == When::Manual));
            job.start_in = job_start_in;
            job.reason = if m.contains("only") || m.contains("except") {
                "only/except matched".into()
            } else {
                "always in the pipeline".into()
            };
        }
        if job.when == When::Delayed && job.start_in.is_none() {
            self.diags.error(
                d.node.pos,
                format!("`{base}`: `when: delayed` needs `start_in`"),
            );
        }
        Some(needs_node)
    }

    /// The job's `dependencies`: a list of job names, or `null` for none.
    fn job_dependencies(&mut self, d: &Draft<'_>, job: &mut Job) {
        let Some(deps) = d.map.get("dependencies") else {
            return;
        };
        match deps.as_seq() {
            Some(_) => job.dependencies = Some(string_list(deps)),
            None if deps.is_null() => job.dependencies = Some(Vec::new()),
            None => self.diags.error(
                deps.pos,
                format!("`{}`: `dependencies` must be an array of job names", d.name),
            ),
        }
    }

    fn script(&mut self, n: Option<&Node>, job: &str, key: &str) -> Vec<String> {
        // A `null` script is reported as blank by `check_keywords`.
        let Some(n) = n.filter(|n| !n.is_null()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.flatten_script(n, job, key, 0, &mut out);
        out
    }

    fn flatten_script(
        &mut self,
        n: &Node,
        job: &str,
        key: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        match &n.value {
            Value::Seq(items) if depth < 10 => {
                for i in items {
                    self.flatten_script(i, job, key, depth + 1, out);
                }
            }
            Value::Str(s) => out.push(s.clone()),
            // GitLab takes strings only: `script: 5` is refused, not run as `5`.
            _ => self.diags.error(
                n.pos,
                format!(
                    "`{job}`: `{key}` must be a string or a nested array of strings up to 10 levels deep, not {}",
                    a_kind(n)
                ),
            ),
        }
    }

    /// Evaluates `rules`. `None` when no rule matched or the matching rule says `never`.
    fn rules(
        &mut self,
        rules: &Node,
        resolver: &vars::Resolver<'_>,
        workflow: bool,
    ) -> Option<RuleOutcome> {
        if rules.as_seq().is_none() {
            self.diags.error(rules.pos, "`rules` must be an array");
            return None;
        }
        let lookup = |n: &str| resolver.get(n);
        // Nested arrays (an anchor of a list of rules spliced into a list) are flattened, as GitLab
        // accepts rules nested up to 10 levels.
        for r in flatten_seq(rules) {
            let Some(rm) = r.as_map() else {
                self.diags.error(r.pos, "each rule must be a mapping");
                continue;
            };
            let allowed: &[&str] = if workflow {
                &[
                    "if",
                    "changes",
                    "exists",
                    "when",
                    "variables",
                    "auto_cancel",
                ]
            } else {
                &[
                    "if",
                    "changes",
                    "exists",
                    "when",
                    "allow_failure",
                    "variables",
                    "needs",
                    "start_in",
                    "interruptible",
                ]
            };
            for e in &rm.entries {
                self.known_key(e, allowed, |k, hint| {
                    format!("unknown rule keyword `{k}`{hint}")
                });
            }
            let mut matched = true;
            let mut why = Vec::new();
            if let Some(cond) = rm.get("if") {
                let Some(text) = cond.as_str() else {
                    // A job's rules are checked by `rule_types`.
                    if workflow {
                        self.diags.error(cond.pos, "`if` must be a string");
                    }
                    continue;
                };
                let parsed = self
                    .exprs
                    .entry(text.to_string())
                    .or_insert_with(|| std::rc::Rc::new(expr::parse(text)))
                    .clone();
                match &*parsed {
                    Ok(e) => {
                        matched &= e.eval(&lookup);
                        why.push(format!("if `{text}`"));
                    }
                    Err(e) => {
                        let mut p = cond.pos;
                        p.col += u32::try_from(e.offset).unwrap_or(0);
                        self.diags.error(
                            p,
                            format!("invalid `rules:if` expression `{text}`: {}", e.message),
                        );
                        return None;
                    }
                }
            }
            if let Some(ch) = rm.get("changes") {
                matched &= self.changes(&rule_paths(ch, &lookup));
                why.push("changes".into());
            }
            if let Some(ex) = rm.get("exists") {
                matched &= self.exists(&rule_paths(ex, &lookup));
                why.push("exists".into());
            }
            if !matched {
                continue;
            }
            let when_node = rm.get("when");
            let when = match when_node.and_then(Node::as_str) {
                Some("never") => return None,
                Some(s) => match parse_when(s) {
                    Some(w) => Some(w),
                    None => {
                        self.diags.error(
                            when_node.map_or(r.pos, |n| n.pos),
                            format!("unknown `when` value `{s}`"),
                        );
                        return None;
                    }
                },
                None => None,
            };
            let reason = if why.is_empty() {
                "rule without conditions".to_string()
            } else {
                format!("rules: {}", why.join(", "))
            };
            return Some(RuleOutcome {
                when,
                allow_failure: rm
                    .get("allow_failure")
                    .and_then(|a| self.allow_failure(a, "rule")),
                variables: rm
                    .get("variables")
                    .map(|v| self.variables(v, "rules:variables"))
                    .unwrap_or_default(),
                // `needs: null` in a rule leaves the job's `needs` as they are.
                rule_needs: rm.get("needs").filter(|x| !x.is_null()).cloned(),
                start_in: rm
                    .get("start_in")
                    .and_then(|t| self.duration(t, "rule", "start_in")),
                reason,
            });
        }
        None
    }

    fn changes(&self, pats: &[String]) -> bool {
        let Some(changed) = self.sources.changed_files() else {
            return true;
        };
        pats.iter()
            .any(|p| load::rule_glob(p).is_some_and(|g| changed.iter().any(|f| g.is_match(f))))
    }

    fn exists(&self, pats: &[String]) -> bool {
        pats.iter().any(|p| {
            load::rule_glob(p).is_some_and(|g| self.sources.files().iter().any(|f| g.is_match(f)))
        })
    }

    /// `only` / `except`: whether the job is in the pipeline.
    ///
    /// As in GitLab, `only` defaults to `[branches, tags]` (so a job without `rules`, `only` and
    /// `except` is not in a merge request pipeline), unless the pipeline has `workflow:rules`; and
    /// an `only` without `refs` gets that default's `refs`.
    fn only_except(&mut self, m: &Map, job: &str, resolved: &vars::Resolver<'_>) -> bool {
        let only = m.get("only");
        let except = m.get("except");
        if only.is_none() && except.is_none() && self.workflow_rules {
            return true;
        }
        let inc = match only {
            Some(o) => self.ref_policy(o, job, resolved, true),
            None if self.workflow_rules => true,
            None => refs_match(&["branches".to_string(), "tags".to_string()], resolved),
        };
        let exc = match except {
            Some(e) => self.ref_policy(e, job, resolved, false),
            None => false,
        };
        inc && !exc
    }

    /// Whether an `only`/`except` clause matches. `only` is the clause of `only`, whose `refs`
    /// default to `[branches, tags]`. As GitLab documents, an `only` clause matches when all of its
    /// keys match, an `except` clause when any of them does.
    fn ref_policy(&mut self, n: &Node, job: &str, vars: &vars::Resolver<'_>, only: bool) -> bool {
        let lookup = |k: &str| vars.get(k);
        let (refs, variables, changes) = match &n.value {
            Value::Seq(_) | Value::Str(_) => (Some(string_list(n)), None, None),
            Value::Map(m) => {
                for e in &m.entries {
                    if !["refs", "variables", "changes", "kubernetes"].contains(&e.key.as_str()) {
                        self.diags.error(
                            e.key_pos,
                            format!("`{job}`: unknown `only`/`except` keyword `{}`", e.key),
                        );
                    }
                }
                (
                    m.get("refs").map(string_list),
                    m.get("variables").map(string_list),
                    m.get("changes").map(string_list),
                )
            }
            Value::Null => return true,
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{job}`: `only`/`except` must be an array or a mapping"),
                );
                return false;
            }
        };
        let refs = match refs {
            None if only => Some(vec!["branches".to_string(), "tags".to_string()]),
            r => r,
        };
        // `only` matches when every key present matches; `except` when any of them does.
        let mut matched = Vec::new();
        if let Some(refs) = refs {
            matched.push(refs_match(&refs, vars));
        }
        if let Some(exprs) = variables {
            matched.push(exprs.iter().any(|e| match expr::parse(e) {
                Ok(x) => x.eval(&lookup),
                Err(err) => {
                    self.diags.error(
                        n.pos,
                        format!("`{job}`: invalid expression `{e}`: {}", err.message),
                    );
                    false
                }
            }));
        }
        if let Some(ch) = changes {
            matched.push(self.changes(&ch));
        }
        if only {
            matched.iter().all(|m| *m)
        } else {
            matched.iter().any(|m| *m)
        }
    }

    fn allow_failure(&mut self, n: &Node, job: &str) -> Option<AllowFailure> {
        match &n.value {
            Value::Bool(b) => Some(AllowFailure::Bool(*b)),
            Value::Map(m) => match m.get("exit_codes") {
                Some(c) => Some(AllowFailure::ExitCodes(int_list(c))),
                None => {
                    self.diags.error(
                        n.pos,
                        format!("`{job}`: `allow_failure` mapping needs `exit_codes`"),
                    );
                    None
                }
            },
            _ => {
                self.diags.error(
                    n.pos,
                    format!(
                        "`{job}`: `allow_failure` must be a boolean or `{{exit_codes: [...]}}`"
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, job: &str, key: &str) -> Option<Duration> {
        let s = n.scalar_string()?;
        match duration::parse(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.diags
                    .error(n.pos, format!("`{job}`: invalid `{key}`: {e}"));
                None
            }
        }
    }

    fn retry(&mut self, n: &Node, job: &str) -> Retry {
        let r = match &n.value {
            Value::Int(i) => Retry {
                max: u32::try_from(*i).unwrap_or(99),
                ..Retry::default()
            },
            Value::Map(m) => Retry {
                max: m
                    .get("max")
                    .and_then(|x| match x.value {
                        Value::Int(i) => u32::try_from(i).ok(),
                        _ => None,
                    })
                    .unwrap_or(0),
                when: m.get("when").map(string_list).unwrap_or_default(),
                exit_codes: m.get("exit_codes").map(int_list).unwrap_or_default(),
            },
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{job}`: `retry` must be a number or a mapping"),
                );
                return Retry::default();
            }
        };
        if r.max > 2 {
            self.diags
                .error(n.pos, format!("`{job}`: `retry` must be 0, 1 or 2"));
        }
        // GitLab's list: the failure types of its CI YAML reference (including the finer
        // `runner_*` and `stuck_*`/`no_updates_*`/`server_timeout_*` ones), and the other failure
        // reasons of its jobs, which its validation accepts as well.
        const REASONS: &[&str] = &[
            "always",
            "unknown_failure",
            "script_failure",
            "api_failure",
            "stuck_or_timeout_failure",
            "stuck_pending_with_matching_runners",
            "stuck_pending_no_matching_runners",
            "no_updates_running",
            "no_updates_canceling",
            "runner_system_failure",
            "runner_configuration_error",
            "runner_external_dependency_failure",
            "runner_interrupted",
            "runner_unsupported",
            "stale_schedule",
            "job_execution_timeout",
            "server_timeout_running",
            "server_timeout_canceling",
            "archived_failure",
            "unmet_prerequisites",
            "scheduler_failure",
            "data_integrity_failure",
            "missing_dependency_failure",
            "forward_deployment_failure",
            "user_blocked",
            "project_deleted",
            "ci_quota_exceeded",
            "pipeline_loop_detected",
            "no_matching_runner",
            "trace_size_exceeded",
            "builds_disabled",
            "environment_creation_failure",
            "deployment_rejected",
            "failed_outdated_deployment_job",
            "protected_environment_failure",
            "secrets_provider_not_found",
            "ip_restriction_failure",
        ];
        let when_node = n.as_map().and_then(|m| m.get("when"));
        for w in when_node.map(flatten_seq).unwrap_or_default() {
            let Some(w_str) = w.as_str() else { continue };
            if !REASONS.contains(&w_str) {
                let hint = hint(w_str, REASONS);
                self.diags.error(
                    w.pos,
                    format!("`{job}`: unknown `retry:when` value `{w_str}`{hint}"),
                );
            }
        }
        r
    }

    /// `artifacts:when` or `cache:when` (`keyword`) of the mapping `m` at `pos`: on success when
    /// absent, and after an error when unknown.
    fn when_kept(&mut self, m: &Map, pos: Pos, job: &str, keyword: &str) -> ArtifactsWhen {
        match m.get("when").and_then(Node::as_str) {
            None | Some("on_success") => ArtifactsWhen::OnSuccess,
            Some("on_failure") => ArtifactsWhen::OnFailure,
            Some("always") => ArtifactsWhen::Always,
            Some(other) => {
                self.diags.error(
                    pos,
                    format!("`{job}`: unknown `{keyword}:when` value `{other}`"),
                );
                ArtifactsWhen::OnSuccess
            }
        }
    }

    fn artifacts(&mut self, n: &Node, job: &str) -> Option<Artifacts> {
        let m = n.as_map()?;
        let when = self.when_kept(m, n.pos, job, "artifacts");
        let mut reports = Vec::new();
        for e in m
            .get("reports")
            .and_then(Node::as_map)
            .map_or(&[][..], |r| &r.entries)
        {
            if e.key == "coverage_report" {
                if let Some(r) = self.coverage_report(&e.value, job) {
                    reports.push(r);
                }
            } else {
                reports.push((e.key.clone(), string_list(&e.value)));
            }
        }
        if let Some(p) = m.get("paths") {
            if p.as_seq().is_none() && !p.is_null() {
                self.diags.error(
                    p.pos,
                    format!("`{job}`: `artifacts:paths` must be an array"),
                );
            }
        }
        Some(Artifacts {
            name: m.get("name").and_then(Node::scalar_string),
            paths: m.get("paths").map(string_list).unwrap_or_default(),
            exclude: m.get("exclude").map(string_list).unwrap_or_default(),
            untracked: matches!(
                m.get("untracked").map(|x| &x.value),
                Some(Value::Bool(true))
            ),
            when,
            expire_in: m.get("expire_in").and_then(Node::scalar_string),
            reports,
        })
    }

    /// `artifacts:reports:coverage_report`: `{coverage_format: cobertura | jacoco, path: PATH}`,
    /// both required, as GitLab says. A Cobertura report becomes `("coverage_report", [PATH])`;
    /// Gantry does not read JaCoCo, so a JaCoCo one is kept as `("jacoco", [PATH])` with a warning.
    fn coverage_report(&mut self, n: &Node, job: &str) -> Option<(String, Vec<String>)> {
        let Some(m) = n.as_map() else {
            self.diags.error(
                n.pos,
                format!("`{job}`: `artifacts:reports:coverage_report` must be a mapping with `coverage_format` and `path`, not {}", a_kind(n)),
            );
            return None;
        };
        for e in &m.entries {
            if e.key != "coverage_format" && e.key != "path" {
                let hint = hint(&e.key, &["coverage_format", "path"]);
                self.diags.error(
                    e.key_pos,
                    format!(
                        "`{job}`: unknown `artifacts:reports:coverage_report` keyword `{}`{hint}",
                        e.key
                    ),
                );
            }
        }
        let mut missing = |key: &str| {
            self.diags.error(
                n.pos,
                format!("`{job}`: `artifacts:reports:coverage_report` needs `{key}`"),
            );
        };
        let format = m.get("coverage_format");
        let path = m.get("path");
        if format.is_none() {
            missing("coverage_format");
        }
        if path.is_none() {
            missing("path");
        }
        let (format, path) = (format?, path?);
        let Some(path_s) = path.as_str() else {
            self.diags.error(
                path.pos,
                format!(
                    "`{job}`: `artifacts:reports:coverage_report:path` must be a string, not {}",
                    a_kind(path)
                ),
            );
            return None;
        };
        match format.as_str() {
            Some("cobertura") => Some(("coverage_report".to_owned(), vec![path_s.to_owned()])),
            Some("jacoco") => {
                self.diags.warning(
                    format.pos,
                    format!("`{job}`: Gantry does not read JaCoCo coverage reports; the file is kept as an artifact, and gates see no coverage from it"),
                );
                Some(("jacoco".to_owned(), vec![path_s.to_owned()]))
            }
            _ => {
                self.diags.error(
                    format.pos,
                    format!("`{job}`: `artifacts:reports:coverage_report:coverage_format` must be `cobertura` or `jacoco`"),
                );
                None
            }
        }
    }

    fn cache(&mut self, n: &Node, job: &str) -> Vec<Cache> {
        let items: Vec<&Node> = match &n.value {
            // Nested arrays (an anchor of a list of caches spliced into a list) are flattened.
            Value::Seq(_) => flatten_seq(n),
            Value::Map(_) => vec![n],
            Value::Null => return Vec::new(),
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{job}`: `cache` must be a mapping or an array of mappings"),
                );
                return Vec::new();
            }
        };
        if items.len() > 4 {
            self.diags
                .error(n.pos, format!("`{job}`: at most 4 caches are allowed"));
        }
        let mut out = Vec::new();
        for c in items {
            let Some(m) = c.as_map() else {
                self.diags
                    .error(c.pos, format!("`{job}`: each cache must be a mapping"));
                continue;
            };
            let key = match m.get("key") {
                None => CacheKey::Literal("default".into()),
                Some(k) => match &k.value {
                    Value::Map(km) => {
                        let files = km.get("files").map(string_list).unwrap_or_default();
                        if files.is_empty() || files.len() > 2 {
                            self.diags.error(
                                k.pos,
                                format!("`{job}`: `cache:key:files` must list one or two files"),
                            );
                        }
                        CacheKey::Files {
                            files,
                            prefix: km.get("prefix").and_then(Node::scalar_string),
                        }
                    }
                    _ => {
                        let s = k.scalar_string().unwrap_or_default();
                        if s.contains('/')
                            || s == "."
                            || s == ".."
                            || s.contains("%2F")
                            || s.contains("%2f")
                        {
                            self.diags.error(
                                k.pos,
                                format!(
                                    "`{job}`: `cache:key` cannot contain `/` or be `.` or `..`"
                                ),
                            );
                        }
                        CacheKey::Literal(s)
                    }
                },
            };
            let policy = match m.get("policy").and_then(Node::scalar_string).as_deref() {
                None | Some("pull-push") => CachePolicy::PullPush,
                Some("pull") => CachePolicy::Pull,
                Some("push") => CachePolicy::Push,
                Some(other) if other.contains('$') => CachePolicy::PullPush,
                Some(other) => {
                    self.diags
                        .error(c.pos, format!("`{job}`: unknown cache `policy` `{other}`"));
                    CachePolicy::PullPush
                }
            };
            let when = self.when_kept(m, c.pos, job, "cache");
            out.push(Cache {
                key,
                paths: m.get("paths").map(string_list).unwrap_or_default(),
                untracked: matches!(
                    m.get("untracked").map(|x| &x.value),
                    Some(Value::Bool(true))
                ),
                policy,
                when,
                fallback_keys: m.get("fallback_keys").map(string_list).unwrap_or_default(),
                unprotect: matches!(
                    m.get("unprotect").map(|x| &x.value),
                    Some(Value::Bool(true))
                ),
                key_suffix: String::new(),
            });
        }
        out
    }

    /// The `name` of the mapping `m` (the value of `n`); without one, the error `message()`.
    fn name_of(&mut self, n: &Node, m: &Map, message: impl FnOnce() -> String) -> Option<String> {
        let name = m.get("name").and_then(Node::scalar_string);
        if name.is_none() {
            self.diags.error(n.pos, message());
        }
        name
    }

    fn environment(&mut self, n: &Node, job: &str) -> Option<Environment> {
        match &n.value {
            Value::Str(s) => Some(Environment {
                name: s.clone(),
                url: None,
                action: "start".into(),
                deployment_tier: None,
            }),
            Value::Map(m) => {
                let name =
                    self.name_of(n, m, || format!("`{job}`: `environment` needs a `name`"))?;
                let action = m
                    .get("action")
                    .and_then(Node::scalar_string)
                    .unwrap_or_else(|| "start".into());
                if !["start", "prepare", "stop", "verify", "access"].contains(&action.as_str()) {
                    self.diags.error(
                        n.pos,
                        format!("`{job}`: unknown `environment:action` `{action}`"),
                    );
                }
                let tier = m.get("deployment_tier").and_then(Node::scalar_string);
                if let Some(t) = &tier {
                    if !["production", "staging", "testing", "development", "other"]
                        .contains(&t.as_str())
                    {
                        self.diags
                            .error(n.pos, format!("`{job}`: unknown `deployment_tier` `{t}`"));
                    }
                }
                Some(Environment {
                    name,
                    url: m.get("url").and_then(Node::scalar_string),
                    action,
                    deployment_tier: tier,
                })
            }
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{job}`: `environment` must be a string or a mapping"),
                );
                None
            }
        }
    }

    /// `gate`: a mapping of metric to `"OPERATOR NUMBER"`. An unknown metric is reported at its
    /// key, a malformed condition at its value.
    fn gate(&mut self, n: &Node, job: &str) -> Vec<Condition> {
        let Some(m) = n.as_map() else {
            self.diags.error(
                n.pos,
                format!(
                    "`{job}`: `gate` must be a mapping of metric to condition (for example `coverage: \">= 80\"`), not {}",
                    a_kind(n)
                ),
            );
            return Vec::new();
        };
        if m.entries.is_empty() {
            self.diags.error(
                n.pos,
                format!("`{job}`: `gate` needs at least one condition"),
            );
        }
        let mut out = Vec::new();
        for e in &m.entries {
            if Metric::from_key(&e.key).is_none() {
                let keys: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
                let mut why = hint(&e.key, &keys);
                if why.is_empty() {
                    why = format!("; known metrics: {}", keys.join(", "));
                }
                self.diags.error(
                    e.key_pos,
                    format!("`{job}`: unknown gate metric `{}`{why}", e.key),
                );
                continue;
            }
            let Some(text) = e.value.as_str() else {
                self.diags.error(
                    e.value.pos,
                    format!(
                        "`{job}`: gate condition `{}` must be a string such as \">= 80\", not {}",
                        e.key,
                        a_kind(&e.value)
                    ),
                );
                continue;
            };
            match Condition::parse(&e.key, text) {
                Ok(c) => out.push(c),
                Err(msg) => self.diags.error(e.value.pos, format!("`{job}`: {msg}")),
            }
        }
        out
    }

    fn coverage(&mut self, n: &Node, job: &str) -> Option<String> {
        let s = n.as_str()?;
        let inner = s.strip_prefix('/').and_then(|x| x.strip_suffix('/'));
        let Some(inner) = inner else {
            self.diags.error(
                n.pos,
                format!("`{job}`: `coverage` must be a regular expression between slashes"),
            );
            return None;
        };
        if let Err(e) = regex::Regex::new(inner) {
            self.diags
                .error(n.pos, format!("`{job}`: invalid `coverage` regex: {e}"));
            return None;
        }
        Some(inner.to_string())
    }

    fn image(&mut self, n: &Node, job: &str, service: bool) -> Option<Image> {
        let list = |x: Option<&Node>| x.map(string_list);
        match &n.value {
            Value::Str(s) => Some(Image {
                name: s.clone(),
                entrypoint: None,
                alias: None,
                command: None,
                pull_policy: Vec::new(),
                variables: Vec::new(),
                docker_user: None,
                docker_platform: None,
            }),
            Value::Map(m) => {
                let name = self.name_of(n, m, || format!("`{job}`: an image needs a `name`"))?;
                let docker_map = m.get("docker").and_then(Node::as_map);
                let docker = |k: &str| {
                    docker_map
                        .and_then(|d| d.get(k))
                        .and_then(Node::scalar_string)
                };
                let variables = if service {
                    self.variables(
                        m.get("variables").unwrap_or(&Node::new(Value::Null, n.pos)),
                        "service variables",
                    )
                } else {
                    Vec::new()
                };
                Some(Image {
                    name,
                    entrypoint: list(m.get("entrypoint")),
                    alias: m.get("alias").and_then(Node::scalar_string),
                    command: list(m.get("command")),
                    pull_policy: list(m.get("pull_policy")).unwrap_or_default(),
                    variables: variables.into_iter().map(|v| (v.key, v.value)).collect(),
                    docker_user: docker("user"),
                    docker_platform: docker("platform"),
                })
            }
            Value::Null => None,
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{job}`: an image must be a string or a mapping"),
                );
                None
            }
        }
    }

    fn services(&mut self, n: Option<&Node>, job: &str) -> Vec<Image> {
        let Some(n) = n else { return Vec::new() };
        match n.as_seq() {
            Some(items) => items
                .iter()
                .filter_map(|i| self.image(i, job, true))
                .collect(),
            None if n.is_null() => Vec::new(),
            None => {
                self.diags
                    .error(n.pos, format!("`{job}`: `services` must be an array"));
                Vec::new()
            }
        }
    }

    /// Resolves `needs` to concrete job names.
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn needs(
        &mut self,
        root: &Node,
        job: &Job,
        n: &Node,
        all: &HashMap<String, Vec<String>>,
        excluded: &HashSet<String>,
        stage_of: &HashMap<String, usize>,
        matrix_of: &HashMap<String, Vec<Variable>>,
    ) -> Vec<Need> {
        // GitLab flattens nested arrays (an anchor of a list spliced into a list), and takes a
        // mapping as one need.
        let items: Vec<&Node> = match &n.value {
            Value::Seq(_) => flatten_seq(n),
            Value::Map(_) => vec![n],
            _ => {
                self.diags.error(
                    n.pos,
                    format!("`{}`: `needs` must be an array", job.base_name),
                );
                return Vec::new();
            }
        };
        if items.len() > 50 {
            self.diags.error(
                n.pos,
                format!("`{}`: at most 50 `needs` are allowed", job.base_name),
            );
        }
        // `$[[ matrix.X ]]` means "the value of X in this job's own matrix", anywhere in the entry.
        let own: HashMap<&str, &str> = matrix_of
            .get(&job.name)
            .map(|vs| {
                vs.iter()
                    .map(|v| (v.key.as_str(), v.value.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut out: Vec<Need> = Vec::new();
        for original in items {
            let interpolated;
            let item = if has_matrix_expression(original) {
                let mut copy = original.clone();
                let mut missing = Vec::new();
                interpolate_matrix(&mut copy, &own, &mut missing);
                for (pos, key) in missing {
                    self.diags.error(
                        pos,
                        format!(
                            "`{}`: `{key}` does not exist in the job's matrix configuration (`$[[ matrix.{key} ]]`)",
                            job.base_name
                        ),
                    );
                }
                interpolated = copy;
                &interpolated
            } else {
                original
            };
            let (name, artifacts, optional, matrix) = match &item.value {
                Value::Str(s) => (s.clone(), true, false, None),
                Value::Map(m) => {
                    if m.contains("pipeline") || m.contains("project") {
                        self.diags.warning(item.pos, format!("`{}`: cross-pipeline and cross-project `needs` are ignored locally", job.base_name));
                        continue;
                    }
                    let Some(name) = m.get("job").and_then(Node::as_str).map(str::to_string) else {
                        self.diags.error(
                            item.pos,
                            format!(
                                "`{}`: a `needs` entry needs `job`, the name of a job",
                                job.base_name
                            ),
                        );
                        continue;
                    };
                    let mut flag = |k: &str, d: bool| match m.get(k) {
                        Some(x) => {
                            self.shape(x, Shape::Bool, &job.base_name, &format!("needs:{k}"));
                            match x.value {
                                Value::Bool(b) => b,
                                _ => d,
                            }
                        }
                        None => d,
                    };
                    let artifacts = flag("artifacts", true);
                    let optional = flag("optional", false);
                    let matrix = m
                        .get("parallel")
                        .and_then(Node::as_map)
                        .and_then(|p| p.get("matrix"))
                        .and_then(Node::as_seq);
                    (name, artifacts, optional, matrix)
                }
                _ => {
                    self.diags.error(
                        item.pos,
                        format!(
                            "`{}`: a `needs` entry must be a job name or a mapping, not {}",
                            job.base_name,
                            item.kind()
                        ),
                    );
                    continue;
                }
            };
            let single;
            let instances: &Vec<String> = match all.get(&name) {
                Some(i) => i,
                // One instance of a `parallel` job, by its full name (`build: [arm64]`, `test 1/2`).
                None if all.values().any(|v| v.contains(&name)) => {
                    single = vec![name.clone()];
                    &single
                }
                None => {
                    if optional {
                        continue;
                    }
                    let names: Vec<&str> = all.keys().map(String::as_str).collect();
                    let hint = hint(&name, &names);
                    self.diags.follow_on(
                        item.pos,
                        format!(
                            "`{}` needs `{name}`, which is not a job of this pipeline{hint}",
                            job.base_name
                        ),
                    );
                    continue;
                }
            };
            let mut chosen: Vec<&String> = instances.iter().collect();
            if let Some(matrix) = matrix {
                let wanted: Vec<Vec<Variable>> = self.matrix(&job.base_name, matrix);
                chosen.retain(|inst| {
                    let iv = matrix_of.get(*inst).map(Vec::as_slice).unwrap_or_default();
                    wanted.iter().any(|w| {
                        w.iter().all(|want| {
                            iv.iter()
                                .any(|x| x.key == want.key && x.value == want.value)
                        })
                    })
                });
                if chosen.is_empty() && !optional {
                    self.diags.error(item.pos, format!("`{}` needs `{name}` with a `parallel:matrix` that matches none of its jobs", job.base_name));
                }
            }
            for inst in chosen {
                if excluded.contains(inst) || !stage_of.contains_key(inst) {
                    if !optional {
                        self.diags.error(item.pos, format!("`{}` needs `{inst}`, but `{inst}` is not in this pipeline (its rules exclude it); mark the need `optional: true`", job.base_name));
                    }
                    continue;
                }
                if stage_of.get(inst).is_some_and(|s| *s > job.stage_index) {
                    let _ = root;
                    self.diags.error(
                        item.pos,
                        format!(
                            "`{}` needs `{inst}`, which is in a later stage",
                            job.base_name
                        ),
                    );
                    continue;
                }
                if inst == &job.name {
                    self.diags
                        .error(item.pos, format!("`{}` needs itself", job.base_name));
                    continue;
                }
                if !out.iter().any(|o| &o.job == inst) {
                    out.push(Need {
                        job: inst.clone(),
                        artifacts,
                        optional,
                    });
                }
            }
        }
        out
    }

    /// Checks `dependencies` and resolves them to job instances (a parallel job means all its instances).
    fn dependencies(
        &mut self,
        root: &Node,
        job: &mut Job,
        all: &HashMap<String, Vec<String>>,
        stage_of: &HashMap<String, usize>,
        pos: Pos,
    ) {
        let Some(deps) = job.dependencies.take() else {
            return;
        };
        let at = job_key_pos(root, &job.base_name, "dependencies").unwrap_or(pos);
        let mut resolved = Vec::new();
        for d in &deps {
            let instances: Vec<&String> = match all.get(d) {
                Some(i) => i.iter().collect(),
                None if stage_of.contains_key(d) => vec![d],
                None => {
                    self.diags.follow_on(
                        at,
                        format!(
                            "`{}`: dependency `{d}` is not a job of this pipeline",
                            job.base_name
                        ),
                    );
                    continue;
                }
            };
            for i in instances {
                if stage_of.get(i).is_some_and(|s| *s > job.stage_index) {
                    self.diags.error(
                        at,
                        format!("`{}`: dependency `{d}` is in a later stage", job.base_name),
                    );
                }
                if stage_of.contains_key(i) && !resolved.contains(i) {
                    resolved.push(i.clone());
                }
            }
            if let Some(needs) = &job.needs {
                if !needs
                    .iter()
                    .any(|n| n.job == *d || all.get(d).is_some_and(|i| i.contains(&n.job)))
                {
                    if needs.is_empty() {
                        // `needs: []` waits for nothing, so there is nothing to take artifacts from.
                        self.diags.warning(
                            at,
                            format!(
                                "`{}`: dependency `{d}` is ignored because of `needs: []`",
                                job.base_name
                            ),
                        );
                    } else {
                        self.diags.error(
                            at,
                            format!(
                                "`{}`: dependency `{d}` must also be listed in `needs`",
                                job.base_name
                            ),
                        );
                    }
                    resolved.retain(|r| needs.iter().any(|n| &n.job == r));
                }
            }
        }
        job.dependencies = Some(resolved);
    }

    /// Reports a cycle among `needs` (possible within one stage).
    fn check_cycles(&mut self, root: &Node, plan: &Plan) {
        let index: HashMap<&str, usize> = plan
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();
        // Iterative three-colour DFS over needs edges.
        let n = plan.jobs.len();
        let mut color = vec![0u8; n];
        for start in 0..n {
            if color[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            color[start] = 1;
            while let Some((v, i)) = stack.pop() {
                let needs = plan.jobs[v].needs.as_deref().unwrap_or_default();
                if i < needs.len() {
                    stack.push((v, i + 1));
                    if let Some(&w) = index.get(needs[i].job.as_str()) {
                        if color[w] == 1 {
                            let mut cycle: Vec<&str> = stack
                                .iter()
                                .map(|(x, _)| plan.jobs[*x].name.as_str())
                                .collect();
                            let from = cycle
                                .iter()
                                .position(|x| *x == plan.jobs[w].name)
                                .unwrap_or(0);
                            cycle.drain(..from);
                            cycle.push(&plan.jobs[w].name);
                            let at = job_key_pos(root, &plan.jobs[v].base_name, "needs")
                                .unwrap_or_default();
                            self.diags
                                .error(at, format!("`needs` cycle: {}", cycle.join(" -> ")));
                            return;
                        }
                        if color[w] == 0 {
                            color[w] = 1;
                            stack.push((w, 0));
                        }
                    }
                } else {
                    color[v] = 2;
                }
            }
        }
    }
}

/// The kind of a node with its article, for messages: `a string`, `an array`, `null`.
pub(crate) fn a_kind(n: &Node) -> &'static str {
    match &n.value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Seq(_) => "an array",
        Value::Map(_) => "a mapping",
    }
}

/// Keywords and the types of their values (see `Compiler::key_shapes`): of `artifacts`, of a cache,
/// of an `environment` mapping, of an `only`/`except` mapping, of a rule, of a rule's
/// `changes`/`exists` mapping, and of an image or a service written as a mapping. A `cache:key`
/// mapping is checked where it is read.
const ARTIFACTS_SHAPES: &[(&[&str], Shape)] = &[
    (&["paths", "exclude"], Shape::StrList),
    (&["untracked", "public"], Shape::Bool),
    (
        &["name", "expire_in", "expose_as", "when", "access"],
        Shape::Str,
    ),
    (&["reports"], Shape::Map),
];
const CACHE_SHAPES: &[(&[&str], Shape)] = &[
    (&["paths", "fallback_keys"], Shape::StrList),
    (&["untracked", "unprotect"], Shape::Bool),
    (&["policy", "when"], Shape::Str),
];
const ENVIRONMENT_SHAPES: &[(&[&str], Shape)] = &[(
    &[
        "name",
        "url",
        "action",
        "on_stop",
        "auto_stop_in",
        "deployment_tier",
    ],
    Shape::Str,
)];
const ONLY_SHAPES: &[(&[&str], Shape)] = &[(&["refs", "variables", "changes"], Shape::StrList)];
const RULE_SHAPES: &[(&[&str], Shape)] = &[
    (&["if", "when"], Shape::Str),
    (&["allow_failure", "interruptible"], Shape::Bool),
    (&["start_in"], Shape::StrOrInt),
    (&["variables"], Shape::Map),
];
const RULE_PATHS_SHAPES: &[(&[&str], Shape)] = &[
    (&["paths"], Shape::StrList),
    (&["compare_to", "project", "ref"], Shape::Str),
];
const IMAGE_SHAPES: &[(&[&str], Shape)] = &[
    (&["name", "alias"], Shape::Str),
    (&["entrypoint", "command"], Shape::StrList),
    (&["pull_policy"], Shape::StrOrStrList),
    (&["docker", "kubernetes", "variables"], Shape::Map),
];

/// The type a keyword's value must have (see `Compiler::shape`).
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Bool,
    Int,
    Map,
    StrList,
    StrOrStrList,
    /// A string, or an integer (a number of seconds, or a cache key).
    StrOrInt,
    IntOrIntList,
    BoolOrStrList,
}

/// The items of a sequence with nested sequences flattened (anchors of lists spliced into lists, as
/// GitLab flattens `needs` and `cache`), or the node itself when it is not a sequence.
fn flatten_seq(n: &Node) -> Vec<&Node> {
    fn walk<'n>(n: &'n Node, depth: usize, out: &mut Vec<&'n Node>) {
        match &n.value {
            Value::Seq(items) if depth < 10 => {
                for i in items {
                    walk(i, depth + 1, out);
                }
            }
            _ => out.push(n),
        }
    }
    let mut out = Vec::new();
    match &n.value {
        Value::Seq(_) => walk(n, 0, &mut out),
        Value::Null => {}
        _ => out.push(n),
    }
    out
}

/// `$[[ matrix.IDENTIFIER ]]`, with any blanks inside the brackets, as GitLab matches it.
fn matrix_expression() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"\$\[\[\s*matrix\.([a-zA-Z0-9_-]+)\s*\]\]").expect("valid regex")
    })
}

/// Whether a string anywhere in `n` holds a matrix expression.
fn has_matrix_expression(n: &Node) -> bool {
    match &n.value {
        Value::Str(s) => s.contains("$[[") && matrix_expression().is_match(s),
        Value::Seq(items) => items.iter().any(has_matrix_expression),
        Value::Map(m) => m.entries.iter().any(|e| has_matrix_expression(&e.value)),
        _ => false,
    }
}

/// Replaces every `$[[ matrix.X ]]` in the strings of `n` with X's value in `own` (a job's own
/// matrix values), as GitLab does in a `needs` entry: several expressions in one string, literals
/// around them. An identifier that `own` lacks is left as written and recorded in `missing`.
fn interpolate_matrix(n: &mut Node, own: &HashMap<&str, &str>, missing: &mut Vec<(Pos, String)>) {
    match &mut n.value {
        Value::Str(s) => {
            let re = matrix_expression();
            if !re.is_match(s) {
                return;
            }
            let pos = n.pos;
            let replaced: String = re
                .replace_all(s, |c: &regex::Captures<'_>| {
                    let key = &c[1];
                    match own.get(key) {
                        Some(v) => (*v).to_string(),
                        None => {
                            missing.push((pos, key.to_string()));
                            c[0].to_string()
                        }
                    }
                })
                .into_owned();
            *s = replaced;
        }
        Value::Seq(items) => {
            for i in items {
                interpolate_matrix(i, own, missing);
            }
        }
        Value::Map(m) => {
            for e in &mut m.entries {
                interpolate_matrix(&mut e.value, own, missing);
            }
        }
        _ => {}
    }
}

/// The paths of `rules:changes` / `rules:exists` (a list, or `{paths: [...]}`), expanded.
fn rule_paths(n: &Node, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let paths = n.as_map().and_then(|m| m.get("paths")).unwrap_or(n);
    string_list(paths)
        .iter()
        .map(|p| vars::expand(p, lookup))
        .collect()
}

/// Whether any of `only`/`except`'s `refs` matches the pipeline, as GitLab's refs policy decides:
/// `branches` and `tags` (never in a merge request pipeline), the pipeline source (`pushes`,
/// `merge_requests`, `schedules`, `web`, ...), else a ref name or a `/regex/` (branch and tag
/// pipelines only). `PATTERN@group/project` also needs the project's path (`CI_PROJECT_PATH`).
fn refs_match(refs: &[String], vars: &vars::Resolver<'_>) -> bool {
    let source = vars.get("CI_PIPELINE_SOURCE").unwrap_or_default();
    let merge_request = source == "merge_request_event";
    let tag = !merge_request && vars.get("CI_COMMIT_TAG").is_some();
    // As GitLab's `Pipeline#branch?`: neither a tag nor a merge request (a detached HEAD too).
    let branch = !merge_request && !tag;
    let ref_name = vars.get("CI_COMMIT_REF_NAME").unwrap_or_default();
    let project = vars.get("CI_PROJECT_PATH").unwrap_or_default();
    let source_name = source.strip_suffix("_event").unwrap_or(&source);
    refs.iter().any(|r| {
        let (pattern, path) = match r.split_once('@') {
            Some((p, path)) => (p, Some(path)),
            None => (r.as_str(), None),
        };
        if path.is_some_and(|p| p != project) {
            return false;
        }
        if (pattern == "tags" && tag) || (pattern == "branches" && branch) {
            return true;
        }
        if !source_name.is_empty() && (pattern == source_name || pattern == plural(source_name)) {
            return true;
        }
        if !(branch || tag) {
            return false;
        }
        match ruby_regex(pattern) {
            Some(re) => re.is_some_and(|re| re.is_match(&ref_name)),
            None => pattern == ref_name,
        }
    })
}

/// `/body/flags` as a regex: `None` when `pattern` is not written as one, `Some(None)` when it is
/// but does not compile.
fn ruby_regex(pattern: &str) -> Option<Option<regex::Regex>> {
    let body = pattern.strip_prefix('/')?;
    let (re, flags) = body.rsplit_once('/')?;
    if re.is_empty() || !flags.chars().all(|c| "imsxU".contains(c)) {
        return None;
    }
    let re = if flags.contains('i') {
        format!("(?i){re}")
    } else {
        re.to_string()
    };
    Some(regex::Regex::new(&re).ok())
}

/// The English plural of a pipeline source, as GitLab compares it (`push` → `pushes`).
fn plural(word: &str) -> String {
    if ["s", "x", "sh", "ch"].iter().any(|e| word.ends_with(e)) {
        format!("{word}es")
    } else if word.ends_with('y') && !word.ends_with("ay") && !word.ends_with("ey") {
        format!("{}ies", &word[..word.len() - 1])
    } else {
        format!("{word}s")
    }
}

fn parse_when(s: &str) -> Option<When> {
    Some(match s {
        "on_success" => When::OnSuccess,
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        "manual" => When::Manual,
        "delayed" => When::Delayed,
        _ => return None,
    })
}

fn int_list(n: &Node) -> Vec<i32> {
    let one = |x: &Node| match x.value {
        Value::Int(i) => i32::try_from(i).ok(),
        _ => None,
    };
    match &n.value {
        Value::Seq(items) => items.iter().filter_map(one).collect(),
        _ => one(n).into_iter().collect(),
    }
}

/// What `inherit:variables` (`false`, or the names to keep) takes from a job: the global variables
/// it does not keep and the job does not set itself, each blanked out at job level.
fn not_inherited(inherit: &Value, plan: &Plan, own: &[Variable]) -> Vec<Variable> {
    let keep = |k: &str| match inherit {
        Value::Bool(b) => *b,
        Value::Seq(list) => list.iter().any(|x| x.as_str() == Some(k)),
        _ => true,
    };
    plan.variables
        .iter()
        .filter(|v| !keep(&v.key) && !own.iter().any(|j| j.key == v.key))
        .map(|v| Variable::new(v.key.clone(), ""))
        .collect()
}

/// Expands the name and URL of a job's environment with the variables it sees, as GitLab does when
/// it creates the pipeline.
fn expand_environment(
    env: &mut Environment,
    plan: &Plan,
    name: &str,
    stage: &str,
    node: Option<(u32, u32)>,
    variables: &[Variable],
) {
    let visible: Vec<Variable> = plan
        .predefined
        .iter()
        .chain(&job_predefined(&job_shell(name, stage, node)))
        .chain(&plan.variables)
        .chain(variables)
        .chain(&plan.cli_variables)
        .cloned()
        .collect();
    let resolved: HashMap<String, String> = vars::resolve(&visible).into_iter().collect();
    env.name = vars::expand(&env.name, &|k| resolved.get(k).cloned());
    env.url = env
        .url
        .as_ref()
        .map(|u| vars::expand(u, &|k| resolved.get(k).cloned()));
}

/// Predefined variables that depend on the job.
fn job_predefined(job: &Job) -> Vec<Variable> {
    let mut v = vec![
        Variable::new("CI_JOB_NAME", job.name.clone()),
        Variable::new("CI_JOB_NAME_SLUG", vars::slug(&job.name)),
        Variable::new("CI_JOB_STAGE", job.stage.clone()),
    ];
    if let Some((i, t)) = job.node {
        v.push(Variable::new("CI_NODE_INDEX", i.to_string()));
        v.push(Variable::new("CI_NODE_TOTAL", t.to_string()));
    } else {
        v.push(Variable::new("CI_NODE_TOTAL", "1"));
    }
    if let Some(env) = &job.environment {
        v.push(Variable::new("CI_ENVIRONMENT_NAME", env.name.clone()));
        v.push(Variable::new(
            "CI_ENVIRONMENT_SLUG",
            environment_slug(&env.name),
        ));
        v.push(Variable::new("CI_ENVIRONMENT_ACTION", env.action.clone()));
        if let Some(url) = &env.url {
            v.push(Variable::new("CI_ENVIRONMENT_URL", url.clone()));
        }
        let tier = env
            .deployment_tier
            .clone()
            .unwrap_or_else(|| guess_tier(&env.name).into());
        v.push(Variable::new("CI_ENVIRONMENT_TIER", tier));
    }
    for v in &mut v {
        v.expand = false;
    }
    v
}

/// `CI_ENVIRONMENT_SLUG`, exactly as GitLab makes it (`Gitlab::Slug::Environment`): lowercased, anything
/// but `[a-z0-9]` turned into `-`, starting with a letter, no repeated dashes, at most 24 characters. When
/// the slug differs from the name or is too long, it is cut to 17 characters and a 6-character suffix
/// derived from the SHA-256 of the name is appended, so that different names never share a slug.
pub fn environment_slug(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut slug = vars::dashed(name);
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug = format!("env-{slug}");
    }
    let mut squeezed = String::with_capacity(slug.len());
    for c in slug.chars() {
        if !(c == '-' && squeezed.ends_with('-')) {
            squeezed.push(c);
        }
    }
    if squeezed.len() <= 24 && squeezed == name {
        return squeezed.trim_end_matches('-').to_string();
    }
    let mut short: String = squeezed.chars().take(17).collect();
    if !short.ends_with('-') {
        short.push('-');
    }
    // Ruby: Digest::SHA2.hexdigest(name).to_i(16).to_s(36).last(6), i.e. the number mod 36^6.
    const MOD: u64 = 36u64.pow(6);
    let digest = Sha256::digest(name.as_bytes());
    let rem = digest
        .iter()
        .fold(0u64, |r, b| (r * 256 + u64::from(*b)) % MOD);
    let mut suffix = [b'0'; 6];
    let mut x = rem;
    for d in suffix.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[usize::try_from(x % 36).unwrap_or(0)];
        x /= 36;
    }
    short.push_str(std::str::from_utf8(&suffix).unwrap_or_default());
    short
}

/// A job with only its name, stage and node set, for computing predefined variables early.
fn job_shell(name: &str, stage: &str, node: Option<(u32, u32)>) -> Job {
    Job {
        node,
        ..Job::new(name, stage, 0)
    }
}

/// GitLab's guess of a deployment tier from an environment name.
fn guess_tier(name: &str) -> &'static str {
    let n = name.to_lowercase();
    if n.starts_with("prod") || n == "live" {
        "production"
    } else if n.starts_with("stag") || n.starts_with("model") || n.starts_with("pre") || n == "demo"
    {
        "staging"
    } else if n.starts_with("test") || n.starts_with("qa") || n.starts_with("uat") {
        "testing"
    } else if n.starts_with("dev") || n.starts_with("review") || n.starts_with("trunk") {
        "development"
    } else {
        "other"
    }
}

/// Where `key` of job `job` is written, for messages.
fn job_key_pos(root: &Node, job: &str, key: &str) -> Option<Pos> {
    root.as_map()?
        .get(job)?
        .as_map()?
        .entry(key)
        .map(|e| e.key_pos)
}
