//! Command-line parsing and the `run` and `lint` commands.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use gantry_agent::executors::Executors;
use gantry_pipeline::plan::{ScopedVariable, Variable, WaitFor, When};
use gantry_pipeline::{Compiled, Context, Plan, Severity};
use serde_json::json;

use crate::output::{Human, Json};
use crate::sources::FsSources;

/// Exit code: the pipeline passed.
const EXIT_OK: u8 = 0;
/// Exit code: the pipeline failed (or lint found problems).
const EXIT_FAILED: u8 = 1;
/// Exit code: a configuration or usage error.
const EXIT_CONFIG: u8 = 2;
/// Exit code: interrupted (Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "Run .gitlab-ci.yml pipelines locally, with GitLab's semantics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (or the named jobs) in this repository.
    Run(RunArgs),
    /// Check the pipeline file without running it.
    Lint(LintArgs),
    /// Print the `.gitlab-ci.yml` equivalent to a `build.yml` (Yunxiao, CodeBuild-style).
    Convert(ConvertArgs),
    /// Run the server: webhooks, pipelines, the job queue, the API.
    Server(crate::server_cmd::Args),
    /// Run an agent: take jobs from a server and run them (or list or revoke agents, or rotate the
    /// registration token).
    Agent(AgentCli),
    /// Manage a server's projects.
    #[command(subcommand)]
    Project(crate::remote::ProjectCommand),
    /// Check a server's token and save it with the server's URL for the other commands.
    Login(crate::client::LoginArgs),
    /// A server's pipelines: list, show, cancel, retry.
    #[command(subcommand)]
    Pipeline(crate::cmd_pipeline::PipelineCommand),
    /// A server's jobs: log (live with --follow), play, retry.
    #[command(subcommand)]
    Job(crate::cmd_pipeline::JobCommand),
    /// Show the environments of this project directory and their deployments (`gantry run`'s),
    /// or a server project's with `--project`.
    #[command(subcommand)]
    Env(crate::deploys::EnvCommand),
    /// Roll an environment of this project directory back: re-deploy an earlier deployment.
    Rollback(crate::rollback::RollbackArgs),
}

/// `gantry agent`: runs an agent, unless a subcommand is given.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentCli {
    #[command(subcommand)]
    command: Option<crate::remote::AgentCommand>,
    #[command(flatten)]
    run: Option<crate::agent_cmd::Args>,
}

pub(crate) use crate::output::Output;

#[derive(Args)]
struct Common {
    /// The project directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// The pipeline file, relative to the project directory (default: `.gitlab-ci.yml`, else
    /// `build.yml`).
    #[arg(long, value_name = "PATH")]
    file: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// The GitLab instance for `include:project`, `include:template` and `include:component`
    /// (default: `CI_SERVER_URL`, else the host of the `origin` remote).
    #[arg(long, value_name = "URL", env = "GANTRY_GITLAB_URL")]
    gitlab_url: Option<String>,
    /// Fetch no include: use the include cache only.
    #[arg(long)]
    offline: bool,
}

/// The caller's variables: `run`, `lint` and `rollback` share these.
#[derive(Args)]
pub(crate) struct VariableArgs {
    /// Set a variable; it wins over every other definition.
    #[arg(long = "variable", value_name = "KEY=VALUE")]
    variables: Vec<String>,
    /// Read variables from a YAML file: `KEY: value` or `KEY: {value: ..., masked: true}`.
    #[arg(long, value_name = "PATH")]
    variables_file: Option<PathBuf>,
}

impl VariableArgs {
    /// Whether no variable was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.variables.is_empty() && self.variables_file.is_none()
    }
}

/// What the pipeline is compiled for: `run` and `lint` share these.
#[derive(Args)]
struct PipelineArgs {
    #[command(flatten)]
    variables: VariableArgs,
    /// `CI_PIPELINE_SOURCE` (push, web, schedule, merge_request_event, ...).
    #[arg(long, value_name = "SOURCE", default_value = "push")]
    pipeline_source: String,
}

#[derive(Args)]
#[allow(clippy::struct_excessive_bools)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Mask the value of variable KEY in all output (repeatable).
    #[arg(long, value_name = "KEY")]
    mask: Vec<String>,
    /// Also run the jobs that the named jobs need, transitively.
    #[arg(long)]
    needs: bool,
    /// Run only the jobs that the named jobs need, not the named jobs.
    #[arg(long)]
    only_needs: bool,
    /// Run only the jobs of this stage.
    #[arg(long, value_name = "NAME")]
    stage: Option<String>,
    /// Play this manual job (repeatable).
    #[arg(long, value_name = "JOB")]
    manual: Vec<String>,
    /// How many jobs run at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Show what would run, and why, as a table.
    #[arg(long, group = "mode")]
    list: bool,
    /// Show what would run as JSON.
    #[arg(long, group = "mode")]
    list_json: bool,
    /// Print the fully expanded configuration.
    #[arg(long, group = "mode")]
    preview: bool,
    /// Run jobs that name an `image:` in the shell anyway.
    #[arg(long)]
    shell_executor: bool,
    /// Run jobs in the working tree itself instead of per-job workspaces.
    #[arg(long)]
    in_place: bool,
    /// The base that gates' `new_coverage` compares with (default: `CI_MERGE_REQUEST_DIFF_BASE_SHA`
    /// when set, else the merge base with the default branch).
    #[arg(long, value_name = "REV")]
    diff_base: Option<String>,
    /// A report (`artifacts:reports`) larger than this many megabytes fails its job.
    #[arg(long, value_name = "MB", default_value_t = 50)]
    max_report_mb: u64,
    /// Jobs to run (default: the whole pipeline).
    #[arg(value_name = "JOB")]
    jobs: Vec<String>,
}

#[derive(Args)]
struct LintArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// The `build.yml` to convert.
    #[arg(value_name = "FILE", default_value = "build.yml")]
    file: PathBuf,
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn main() -> Result<u8> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { EXIT_CONFIG } else { EXIT_OK });
        }
    };
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Lint(args) => lint(&args),
        Command::Convert(args) => Ok(convert(&args)),
        Command::Server(args) => crate::server_cmd::main(args),
        Command::Agent(AgentCli {
            command: Some(c), ..
        }) => crate::remote::agent_main(c),
        Command::Agent(AgentCli {
            run: Some(args), ..
        }) => crate::agent_cmd::main(args),
        Command::Agent(_) => {
            eprintln!(
                "gantry: agent: --server URL is required (or a subcommand: list, revoke, rotate-registration-token)"
            );
            Ok(EXIT_CONFIG)
        }
        Command::Project(command) => crate::remote::main(command),
        Command::Login(args) => crate::client::login(&args),
        Command::Pipeline(command) => crate::cmd_pipeline::pipeline_main(&command),
        Command::Job(command) => crate::cmd_pipeline::job_main(&command),
        Command::Env(command) => crate::deploys::main(&command),
        Command::Rollback(args) => crate::rollback::main(&args),
    }
}

/// A configuration or usage error: reported as text or as a JSON `error` event, then exit 2.
pub(crate) fn config_error(output: Output, message: &str) -> u8 {
    match output {
        Output::Json => {
            let line = json!({"event": "error", "message": message}).to_string();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            eprintln!("gantry: {message}");
        }
        Output::Human => eprintln!("gantry: {message}"),
    }
    EXIT_CONFIG
}

fn project_dir(common: &Common) -> Result<PathBuf> {
    let dir = match &common.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    dir.canonicalize()
        .with_context(|| format!("project directory `{}` does not exist", dir.display()))
}

/// Everything compiled for one invocation.
pub(crate) struct Prepared {
    pub(crate) dir: PathBuf,
    /// The pipeline file, relative to `dir`.
    pub(crate) file: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) compiled: Compiled,
    /// The project's files, listed once and shared by the compiler and the runtime.
    pub(crate) files: Vec<String>,
}

/// What a pipeline is compiled from: a project directory, its pipeline file and git facts, the
/// state directory (for the include cache), and the invocation's settings.
pub(crate) struct Source {
    pub(crate) dir: PathBuf,
    pub(crate) file: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) repo: crate::git::RepoInfo,
    pub(crate) gitlab_url: Option<String>,
    pub(crate) offline: bool,
    pub(crate) pipeline_source: String,
    pub(crate) pipeline_id: u64,
    pub(crate) cli_variables: Vec<Variable>,
}

fn prepare(
    common: &Common,
    cli_vars: Vec<Variable>,
    source: &str,
    pipeline_id: Option<u64>,
) -> Result<Prepared> {
    let dir = project_dir(common)?;
    let file = pipeline_file(common.file.as_deref(), &dir)?;
    let state_dir = dir.join(".gantry");
    let repo = crate::git::read(&dir);
    let pipeline_id = match pipeline_id {
        Some(id) => id,
        None => next_pipeline_id(&state_dir)?,
    };
    compile_source(Source {
        dir,
        file,
        state_dir,
        repo,
        gitlab_url: common.gitlab_url.clone(),
        offline: common.offline,
        pipeline_source: source.to_string(),
        pipeline_id,
        cli_variables: cli_vars,
    })
}

/// Compiles the pipeline of `src`, fetching the remote includes it asks for.
pub(crate) fn compile_source(src: Source) -> Result<Prepared> {
    let Source {
        dir,
        file,
        state_dir,
        repo,
        gitlab_url,
        offline,
        pipeline_source,
        pipeline_id,
        cli_variables,
    } = src;
    let mut ctx = Context {
        file,
        project_dir: dir.to_string_lossy().into_owned(),
        project_dir_name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        git: repo.facts,
        pipeline_source,
        pipeline_id,
        cli_variables,
        server_url: None,
    };
    let opts = match crate::includes::Options::new(
        gitlab_url.as_deref(),
        offline,
        &ctx.cli_variables,
        &ctx,
        &|k| std::env::var(k).ok(),
    ) {
        Ok(o) => o,
        Err(e) => anyhow::bail!(e),
    };
    // The instance includes come from is the one the pipeline sees in `CI_SERVER_*`.
    ctx.server_url = Some(opts.instance.as_str().trim_end_matches('/').to_string());
    let includes = crate::includes::Includes::new(opts, state_dir.join("include-cache"));
    let mut sources = FsSources::new(
        &dir,
        includes,
        repo.files,
        &ctx.git.default_branch,
        repo.is_repo,
    );
    let predefined = gantry_pipeline::context::predefined_variables(&ctx);
    let var = |k: &str| {
        predefined
            .iter()
            .find(|v| v.key == k)
            .map_or("", |v| v.value.as_str())
    };
    sources.own_components(var("CI_SERVER_FQDN"), var("CI_PROJECT_PATH"), &ctx.git.sha);
    // Compile; fetch the remote includes it asked for; compile again with them.
    let mut round = 1;
    let compiled = loop {
        let compiled = gantry_pipeline::compile(&sources, &ctx);
        let missing = sources.includes.take_missing();
        if missing.is_empty() || round >= crate::includes::MAX_ROUNDS {
            break compiled;
        }
        sources.includes.fetch(missing);
        round += 1;
    };
    let files = sources.into_files();
    Ok(Prepared {
        dir,
        file: ctx.file,
        state_dir,
        compiled,
        files,
    })
}

/// The pipeline file to read, relative to the project directory `dir`: `--file`, else
/// `.gitlab-ci.yml`, else a `build.yml`. A missing one is an error that says where it was looked
/// for and what to do.
pub(crate) fn pipeline_file(given: Option<&str>, dir: &Path) -> Result<String> {
    const DEFAULT: &str = ".gitlab-ci.yml";
    const BUILD_YML: &str = "build.yml";
    let name = match given {
        Some(f) => f.trim_start_matches("./").to_string(),
        None if !dir.join(DEFAULT).exists() && dir.join(BUILD_YML).is_file() => {
            BUILD_YML.to_string()
        }
        None => DEFAULT.to_string(),
    };
    if dir.join(&name).exists() {
        return Ok(name);
    }
    let mut message = format!("no `{name}` in {}: ", dir.display());
    let other = [DEFAULT, BUILD_YML]
        .into_iter()
        .find(|f| *f != name && dir.join(f).is_file());
    match (given, other) {
        (_, Some(other)) => message.push_str(&format!(
            "this directory has `{other}`; pass `--file {other}` to use it"
        )),
        (None, None) => message.push_str(&format!(
            "create a `{DEFAULT}` (or a `{BUILD_YML}`), pass `--file PATH` to use another file, \
             or `--cwd DIR` to run in another directory"
        )),
        (Some(_), None) => {
            message.push_str("pass `--file` a path relative to the project directory (see `--cwd`)")
        }
    }
    anyhow::bail!(message)
}

/// `gantry convert`: prints the `.gitlab-ci.yml` equivalent to a `build.yml`; exit 2 with the
/// problems (`FILE:LINE:COLUMN: message`) when it has any.
fn convert(args: &ConvertArgs) -> u8 {
    let name = args.file.to_string_lossy();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return config_error(Output::Human, &format!("cannot read `{name}`: {e}")),
    };
    match gantry_pipeline::buildyml::convert(&text, &name) {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "# Converted from {name} by `gantry convert`: each phase is a job in a stage of its \
                 own,\n# and the files a phase leaves pass to the next ones as artifacts."
            );
            let _ = out.write_all(yaml.as_bytes());
            let _ = out.flush();
            EXIT_OK
        }
        Err(diagnostics) => {
            print_errors(&diagnostics, &format!("`{name}`"), "nothing converted");
            EXIT_CONFIG
        }
    }
}

/// Creates `.gantry/` (ignored by git through its own `.gitignore`) and returns the next pipeline id.
pub(crate) fn next_pipeline_id(state_dir: &Path) -> Result<u64> {
    ensure_state_dir(state_dir)?;
    let path = state_dir.join("pipeline-id");
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let next = last + 1;
    std::fs::write(&path, next.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(next)
}

fn ensure_state_dir(state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let ignore = state_dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, "*\n")
            .with_context(|| format!("cannot write {}", ignore.display()))?;
    }
    Ok(())
}

/// The variables of `--variables-file` and `--variable`, with `mask`'s keys masked; then the
/// variables file's entries scoped to environments.
pub(crate) fn cli_variables(
    args: &VariableArgs,
    mask: &[String],
) -> Result<(Vec<Variable>, Vec<ScopedVariable>), String> {
    let mut vars = Vec::new();
    let mut scoped = Vec::new();
    if let Some(path) = &args.variables_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read variables file {}: {e}", path.display()))?;
        let (plain, s) =
            parse_variables_file(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        vars.extend(plain);
        scoped = s;
    }
    for v in &args.variables {
        let Some((k, val)) = v.split_once('=') else {
            return Err(format!("--variable `{v}` must be KEY=VALUE"));
        };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "--variable `{v}`: `{k}` is not a valid variable name"
            ));
        }
        vars.push(Variable {
            key: k.to_string(),
            value: val.to_string(),
            expand: false,
            masked: false,
        });
    }
    for m in mask {
        let mut found = false;
        let all = vars.iter_mut().chain(
            scoped
                .iter_mut()
                .map(|s: &mut ScopedVariable| &mut s.variable),
        );
        for v in all.filter(|v| &v.key == m) {
            v.masked = true;
            found = true;
        }
        if !found {
            return Err(format!(
                "--mask {m}: no variable `{m}` was given with --variable or --variables-file"
            ));
        }
    }
    Ok((vars, scoped))
}

/// A variables file: a YAML mapping of `KEY: value`, `KEY: {value: ..., masked: bool, expand: bool,
/// environment_scope: ...}`, or `KEY: [{value: ..., environment_scope: ...}, ...]`. Returns the
/// plain variables, then those scoped to environments (a list's entries, and any entry with an
/// `environment_scope`, which defaults to `*`).
fn parse_variables_file(text: &str) -> Result<(Vec<Variable>, Vec<ScopedVariable>), String> {
    use gantry_pipeline::yaml::{self, Value};
    let docs = yaml::parse(text, 0).map_err(|e| e.to_string())?;
    let Some(root) = docs.docs.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let Some(map) = root.as_map() else {
        return Err("1:1: a variables file must be a mapping".into());
    };
    let mut plain = Vec::new();
    let mut scoped = Vec::new();
    for e in &map.entries {
        match &e.value.value {
            Value::Map(_) => match variable_entry(&e.key, &e.value)? {
                (v, None) => plain.push(v),
                (variable, Some(environment_scope)) => scoped.push(ScopedVariable {
                    variable,
                    environment_scope,
                }),
            },
            Value::Seq(items) => {
                for item in items {
                    let (variable, scope) = variable_entry(&e.key, item)?;
                    scoped.push(ScopedVariable {
                        variable,
                        environment_scope: scope.unwrap_or_else(|| "*".into()),
                    });
                }
            }
            _ => plain.push(Variable {
                key: e.key.clone(),
                value: e.value.scalar_string().unwrap_or_default(),
                expand: false,
                masked: false,
            }),
        }
    }
    Ok((plain, scoped))
}

/// One `{value, masked, expand, description, environment_scope}` entry of variable `key`, and its
/// scope if it gives one.
fn variable_entry(
    key: &str,
    node: &gantry_pipeline::yaml::Node,
) -> Result<(Variable, Option<String>), String> {
    use gantry_pipeline::yaml::{Node, Value};
    let at = |n: &Node| format!("{}:{}", n.pos.line, n.pos.col);
    let Some(m) = node.as_map() else {
        return Err(format!(
            "{}: an entry of variable `{key}` must be a mapping with a `value`",
            at(node)
        ));
    };
    const KEYS: [&str; 5] = [
        "value",
        "masked",
        "expand",
        "description",
        "environment_scope",
    ];
    if let Some(unknown) = m.entries.iter().find(|k| !KEYS.contains(&k.key.as_str())) {
        return Err(format!(
            "{}:{}: variable `{key}`: unknown key `{}` (expected one of {})",
            unknown.key_pos.line,
            unknown.key_pos.col,
            unknown.key,
            KEYS.join(", ")
        ));
    }
    let flag = |k: &str, d: bool| match m.get(k).map(|n| &n.value) {
        Some(Value::Bool(b)) => *b,
        _ => d,
    };
    let Some(value) = m.get("value").and_then(Node::scalar_string) else {
        return Err(format!("{}: variable `{key}` needs a `value`", at(node)));
    };
    let scope = match m.get("environment_scope") {
        None => None,
        Some(n) => match n.scalar_string().filter(|s| !s.is_empty()) {
            Some(s) => Some(s),
            None => {
                return Err(format!(
                    "{}: variable `{key}`: `environment_scope` must be an environment name or pattern",
                    at(n)
                ));
            }
        },
    };
    let variable = Variable {
        key: key.to_string(),
        value,
        expand: flag("expand", false),
        masked: flag("masked", false),
    };
    Ok((variable, scope))
}

fn print_diagnostics(compiled: &Compiled, output: Output) -> Option<u8> {
    for d in compiled
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        eprintln!("gantry: {d}");
    }
    let errors: Vec<String> = compiled.errors().map(ToString::to_string).collect();
    if errors.is_empty() {
        return None;
    }
    match output {
        Output::Json => {
            for e in &errors {
                config_error(Output::Json, e);
            }
        }
        Output::Human => print_errors(&errors, "the pipeline", "nothing ran"),
    }
    Some(EXIT_CONFIG)
}

/// Prints each error on a line of its own, then `gantry: WHAT has N error(s); OUTCOME`.
fn print_errors(errors: &[impl std::fmt::Display], what: &str, outcome: &str) {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!(
        "gantry: {what} has {} error{}; {outcome}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

fn run(args: &RunArgs) -> Result<u8> {
    let output = args.common.output;
    let (cli_vars, scoped) = match cli_variables(&args.pipeline.variables, &args.mask) {
        Ok(v) => v,
        Err(e) => return Ok(config_error(output, &e)),
    };
    let dry = args.list || args.list_json || args.preview;
    let mut prepared = match prepare(
        &args.common,
        cli_vars,
        &args.pipeline.pipeline_source,
        dry.then_some(0),
    ) {
        Ok(p) => p,
        Err(e) => return Ok(config_error(output, &format!("{e:#}"))),
    };
    // Each job picks its scoped values by its environment when its variables are built.
    if let Some(plan) = prepared.compiled.plan.as_mut() {
        plan.scoped_variables = scoped;
    }
    let code = run_prepared(args, &prepared);
    // The process is about to exit: freeing a large plan node by node would only cost time.
    std::mem::forget(prepared);
    code
}

fn run_prepared(args: &RunArgs, prepared: &Prepared) -> Result<u8> {
    let output = args.common.output;
    if args.preview {
        // The expanded configuration is useful even when it has errors.
        let text = gantry_pipeline::preview::to_yaml(&prepared.compiled.expanded);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        return Ok(print_diagnostics(&prepared.compiled, Output::Human).unwrap_or(EXIT_OK));
    }
    if let Some(code) = print_diagnostics(&prepared.compiled, output) {
        return Ok(code);
    }
    let Some(plan) = prepared.compiled.plan.as_ref() else {
        return Ok(EXIT_CONFIG);
    };
    if let Some(reason) = &prepared.compiled.workflow_skipped {
        eprintln!("gantry: no pipeline: {reason}");
        if args.list_json {
            // No pipeline: no jobs, which is still a JSON array.
            let _ = writeln!(std::io::stdout().lock(), "[]");
            return Ok(EXIT_OK);
        }
        if output == Output::Json {
            Json::new().write(
                &json!({"event": "pipeline_finished", "status": "success", "duration_ms": 0}),
            );
        }
        return Ok(EXIT_OK);
    }
    for m in &args.manual {
        if matching(plan, m).is_empty() {
            return Ok(config_error(output, &format!("--manual {m}: no such job")));
        }
    }
    // A manual job runs when it is played with `--manual` or named on the command line.
    let played: HashSet<usize> = args
        .manual
        .iter()
        .chain(&args.jobs)
        .flat_map(|m| matching(plan, m))
        .collect();
    let selected = match select(plan, args, &played) {
        Ok(s) => s,
        Err(e) => return Ok(config_error(output, &e)),
    };
    if args.list || args.list_json {
        list(plan, &selected, args.list_json);
        return Ok(EXIT_OK);
    }
    if let Err(e) = check_needed_manual_jobs(plan, args, &selected, &played) {
        return Ok(config_error(output, &e));
    }
    for (i, job) in plan.jobs.iter().enumerate() {
        if selected[i] && job.trigger {
            return Ok(config_error(
                output,
                &format!(
                    "`{}`: `trigger` (child and multi-project pipelines) is not supported yet",
                    job.name
                ),
            ));
        }
    }
    let play = played.iter().map(|&i| plan.jobs[i].name.clone()).collect();
    execute(args, prepared, plan, selected, play)
}

/// The change's lines for `new_coverage`, read only when a selected gate tests it. The base:
/// `--diff-base`, else `CI_MERGE_REQUEST_DIFF_BASE_SHA` (a `--variable`, or the environment), else
/// the merge base with the default branch (without one, `new_coverage` has no data).
fn changes(
    args: &RunArgs,
    prepared: &Prepared,
    plan: &Plan,
    selected: &[bool],
) -> Result<Option<Arc<gantry_runtime::gantry_reports::ChangedLines>>> {
    let wanted = plan.jobs.iter().zip(selected).any(|(j, s)| {
        *s && j
            .gate
            .iter()
            .any(|c| c.metric == gantry_pipeline::gate::Metric::NewCoverage)
    });
    if !wanted {
        return Ok(None);
    }
    const MR_BASE: &str = "CI_MERGE_REQUEST_DIFF_BASE_SHA";
    let base = args
        .diff_base
        .clone()
        .or_else(|| {
            plan.cli_variables
                .iter()
                .rev()
                .find(|v| v.key == MR_BASE)
                .map(|v| v.value.clone())
        })
        .or_else(|| std::env::var(MR_BASE).ok())
        .filter(|b| !b.is_empty());
    let default_branch = plan
        .predefined
        .iter()
        .find(|v| v.key == "CI_DEFAULT_BRANCH")
        .map_or("main", |v| v.value.as_str());
    match crate::git::changed_lines(&prepared.dir, base.as_deref(), default_branch) {
        Ok(Some(c)) => Ok(Some(Arc::new(c))),
        Ok(None) => {
            eprintln!(
                "gantry: no base for new_coverage (no merge base with {default_branch}); pass --diff-base REV"
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

fn execute(
    args: &RunArgs,
    prepared: &Prepared,
    plan: &Plan,
    selected: Vec<bool>,
    play: Vec<String>,
) -> Result<u8> {
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .max(1);
    let names: Vec<String> = plan
        .jobs
        .iter()
        .zip(&selected)
        .filter(|(_, s)| **s)
        .map(|(j, _)| j.name.clone())
        .collect();
    // Only a run of the whole pipeline says how the ref stands, for `pipeline_fixed`.
    let whole_pipeline = selected.iter().all(|&s| s);
    let config = gantry_runtime::RunConfig {
        project_dir: prepared.dir.clone(),
        state_dir: prepared.state_dir.clone(),
        pipeline_id: plan
            .predefined
            .iter()
            .find(|v| v.key == "CI_PIPELINE_ID")
            .and_then(|v| v.value.parse().ok())
            .unwrap_or(1),
        concurrency,
        in_place: args.in_place,
        selected: selected.clone(),
        play_manual: play,
        echo: true,
        default_timeout: Duration::from_secs(3600),
        files: Some(prepared.files.iter().map(PathBuf::from).collect()),
        overlay: true,
        changes: changes(args, prepared, plan, &selected)?,
        max_report_bytes: args.max_report_mb.saturating_mul(1024 * 1024),
        gate_reports: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(concurrency.clamp(1, 4))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let wants_docker = !args.shell_executor
        && plan
            .jobs
            .iter()
            .zip(&config.selected)
            .any(|(j, s)| *s && j.image.is_some());
    let executor = Arc::new(rt.block_on(Executors::for_run(args.shell_executor, wants_docker)));
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let human = (args.common.output == Output::Human).then(|| Arc::new(Human::new(&names)));
    let json = (args.common.output == Output::Json).then(|| Arc::new(Json::new()));
    let reporter: Arc<dyn gantry_runtime::Reporter> = match (&human, &json) {
        (Some(h), _) => h.clone(),
        (_, Some(j)) => j.clone(),
        _ => unreachable!("one output is always chosen"),
    };
    let pending = Arc::new(crate::rollback::Pending::default());
    let hooks = Arc::new(crate::rollback::Context {
        runtime: rt.handle().clone(),
        project_dir: prepared.dir.clone(),
        state_dir: prepared.state_dir.clone(),
        file: prepared.file.clone(),
        gitlab_url: args.common.gitlab_url.clone(),
        offline: args.common.offline,
        variables: plan.cli_variables.clone(),
        scoped: plan.scoped_variables.clone(),
        by_hand: false,
        pipeline_id: config.pipeline_id,
        executor: executor.clone(),
        face: match (&human, &json) {
            (Some(h), _) => crate::rollback::Face::Human(h.clone()),
            (_, Some(j)) => crate::rollback::Face::Json(j.clone()),
            _ => unreachable!("one output is always chosen"),
        },
        cancel: cancel_rx.clone(),
        pending: pending.clone(),
        notifier: Some(crate::notify::Notifier::new(
            &prepared.compiled.notify,
            plan,
            &prepared.dir,
            json.clone(),
        )),
    });
    let reporter = crate::deploys::Recorder::wrap(
        reporter,
        plan,
        &config.selected,
        &prepared.state_dir,
        Some(hooks),
    );
    let result = rt.block_on(async {
        let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "\ngantry: interrupted; canceling jobs (press Ctrl-C again to exit at once)"
                );
                let _ = cancel_tx.send(true);
                if tokio::signal::ctrl_c().await.is_ok() {
                    gantry_runtime::unmount_workspaces();
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            }
        });
        let flusher = {
            let h = human.clone();
            let j = json.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tick.tick().await;
                    if let Some(h) = &h {
                        h.flush();
                    }
                    if let Some(j) = &j {
                        j.flush();
                    }
                }
            })
        };
        let r = gantry_runtime::run(plan, config, executor, reporter, cancel_rx).await;
        // Rollbacks started by failed verifications, and deployment notifications.
        let rollbacks_ok = pending.wait().await;
        flusher.abort();
        (
            r,
            interrupted.load(std::sync::atomic::Ordering::SeqCst),
            rollbacks_ok,
        )
    });
    let (result, interrupted, rollbacks_ok) = result;
    if let Some(h) = &human {
        h.summary();
    }
    if let Some(j) = &json {
        j.flush();
    }
    let result = result.context("the pipeline could not run")?;
    if !interrupted && whole_pipeline {
        crate::notify::send(
            &rt,
            &prepared.compiled.notify,
            plan,
            &result,
            &prepared.state_dir,
            &prepared.dir,
            json.clone(),
        );
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    if interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(match result.status {
        // A failed rollback fails the command even when its deploy job was allowed to fail.
        gantry_runtime::PipelineStatus::Success if !rollbacks_ok => EXIT_FAILED,
        gantry_runtime::PipelineStatus::Success => EXIT_OK,
        gantry_runtime::PipelineStatus::Failed => EXIT_FAILED,
        gantry_runtime::PipelineStatus::Canceled => EXIT_INTERRUPTED,
        status @ (gantry_runtime::PipelineStatus::Created
        | gantry_runtime::PipelineStatus::Pending
        | gantry_runtime::PipelineStatus::Running
        | gantry_runtime::PipelineStatus::Skipped
        | gantry_runtime::PipelineStatus::Manual) => {
            unreachable!("a run does not end a pipeline {status:?}")
        }
    })
}

/// A job name as the user may type it: `job: [a,b]` and `job: [a, b]` are the same.
fn normalize(name: &str) -> String {
    match name.split_once(": [") {
        Some((base, rest)) => format!(
            "{base}: [{}",
            rest.split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => name.to_string(),
    }
}

/// The plan jobs a user-given name means: the exact job, or every instance of a parallel job.
fn matching(plan: &Plan, name: &str) -> Vec<usize> {
    let n = normalize(name);
    let exact: Vec<usize> = plan
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.name == n)
        .map(|(i, _)| i)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    plan.jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.base_name == name)
        .map(|(i, _)| i)
        .collect()
}

/// The jobs to run. With `--needs`, what the named jobs need comes too: their `needs`, and for a
/// job without `needs` the jobs of the earlier stages, except manual jobs that are not `played`
/// (as in gitlab-ci-local, nobody waits for those).
fn select(plan: &Plan, args: &RunArgs, played: &HashSet<usize>) -> Result<Vec<bool>, String> {
    let n = plan.jobs.len();
    if let Some(stage) = &args.stage {
        if !plan.stages.contains(stage) {
            return Err(format!(
                "--stage {stage}: no such stage (stages: {})",
                plan.stages.join(", ")
            ));
        }
    }
    if args.jobs.is_empty() {
        if args.needs || args.only_needs {
            return Ok(plan
                .jobs
                .iter()
                .map(|j| args.stage.as_ref().is_none_or(|s| &j.stage == s))
                .collect());
        }
        return Ok(plan
            .jobs
            .iter()
            .map(|j| args.stage.as_ref().is_none_or(|s| &j.stage == s))
            .collect());
    }
    let mut named = HashSet::new();
    for j in &args.jobs {
        let m = matching(plan, j);
        if m.is_empty() {
            return Err(format!(
                "no job named `{j}` in this pipeline (its rules may exclude it)"
            ));
        }
        named.extend(m);
    }
    let mut selected = vec![false; n];
    if args.needs || args.only_needs {
        let waits = plan.waits();
        let mut stack: Vec<usize> = named.iter().copied().collect();
        let mut seen: HashSet<usize> = named.clone();
        while let Some(i) = stack.pop() {
            // A job without `needs` needs every job of the earlier stages.
            let preds: Vec<usize> = match &waits[i] {
                WaitFor::Jobs(j) => j.clone(),
                WaitFor::StagesBefore(k) => plan
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(x, j)| {
                        j.stage_index < *k && (j.when != When::Manual || played.contains(x))
                    })
                    .map(|(x, _)| x)
                    .collect(),
            };
            for p in preds {
                if seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        for i in seen {
            selected[i] = !(args.only_needs && named.contains(&i));
        }
    } else {
        for i in named {
            selected[i] = true;
        }
    }
    if let Some(stage) = &args.stage {
        for (i, j) in plan.jobs.iter().enumerate() {
            selected[i] &= &j.stage == stage;
        }
    }
    Ok(selected)
}

/// A job that runs cannot wait for a manual job that nobody plays: as gitlab-ci-local does, that is
/// an error that names the job to play. (Manual jobs reached only through stage order are left
/// out instead; see [`select`].)
fn check_needed_manual_jobs(
    plan: &Plan,
    args: &RunArgs,
    selected: &[bool],
    played: &HashSet<usize>,
) -> Result<(), String> {
    let runs = |i: usize| plan.jobs[i].when != When::Manual || played.contains(&i);
    let named: HashSet<usize> = args.jobs.iter().flat_map(|j| matching(plan, j)).collect();
    for (i, wait) in plan.waits().iter().enumerate() {
        if !((selected[i] && runs(i)) || named.contains(&i)) {
            continue;
        }
        let WaitFor::Jobs(needs) = wait else { continue };
        if let Some(&m) = needs.iter().find(|&&m| m != i && selected[m] && !runs(m)) {
            let (job, manual) = (&plan.jobs[i].name, &plan.jobs[m].name);
            return Err(format!(
                "`{job}` needs `{manual}`, a manual job that is not played: add `--manual {manual}` to run it first"
            ));
        }
    }
    Ok(())
}

fn list(plan: &Plan, selected: &[bool], as_json: bool) {
    let rows: Vec<(&gantry_pipeline::Job, Vec<String>)> = plan
        .jobs
        .iter()
        .zip(selected)
        .filter(|(_, s)| **s)
        .map(|(j, _)| {
            (
                j,
                j.needs
                    .as_ref()
                    .map(|n| n.iter().map(|x| x.job.clone()).collect())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if as_json {
        let arr: Vec<serde_json::Value> = rows
            .iter()
            .map(|(j, needs)| {
                json!({
                    "name": j.name, "stage": j.stage, "when": j.when.as_str(),
                    "allow_failure": j.allow_failure.is_allowed(), "needs": needs,
                    "environment": j.environment.as_ref().map(|e| e.name.clone()),
                })
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(arr));
        return;
    }
    let header = [
        "NAME",
        "STAGE",
        "WHEN",
        "ALLOW FAILURE",
        "NEEDS",
        "ENVIRONMENT",
        "WHY",
    ];
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|(j, needs)| {
            [
                j.name.clone(),
                j.stage.clone(),
                j.when.as_str().to_string(),
                j.allow_failure.is_allowed().to_string(),
                if j.needs.is_some() {
                    format!("[{}]", needs.join(", "))
                } else {
                    "(stages)".into()
                },
                j.environment
                    .as_ref()
                    .map(|e| e.name.clone())
                    .unwrap_or_default(),
                j.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", fmt_row(&header.map(String::from)));
    for r in &table {
        let _ = writeln!(out, "{}", fmt_row(r));
    }
}

fn lint(args: &LintArgs) -> Result<u8> {
    let common = &args.common;
    let cli_vars = match cli_variables(&args.pipeline.variables, &[]) {
        Ok((v, _)) => v,
        Err(e) => return Ok(config_error(common.output, &e)),
    };
    let prepared = match prepare(common, cli_vars, &args.pipeline.pipeline_source, Some(0)) {
        Ok(p) => p,
        Err(e) => return Ok(config_error(common.output, &format!("{e:#}"))),
    };
    let diags = &prepared.compiled.diagnostics;
    // A repeated key is a warning, as GitLab accepts it (the last value wins).
    let is_error = |d: &gantry_pipeline::Diagnostic| d.severity == Severity::Error;
    let failed = diags.iter().any(is_error);
    let mut out = std::io::stdout().lock();
    match common.output {
        Output::Json => {
            let list: Vec<serde_json::Value> = diags
                .iter()
                .map(|d| {
                    json!({"file": d.file, "line": d.line, "column": d.column,
                           "severity": if is_error(d) { "error" } else { "warning" }, "message": d.message})
                })
                .collect();
            let _ = writeln!(out, "{}", json!({"valid": !failed, "diagnostics": list}));
        }
        Output::Human => {
            for d in diags {
                if is_error(d) {
                    let _ = writeln!(out, "{}:{}:{}: {}", d.file, d.line, d.column, d.message);
                } else {
                    let _ = writeln!(out, "{d}");
                }
            }
            if !failed {
                let jobs = prepared.compiled.plan.as_ref().map_or(0, |p| p.jobs.len());
                let _ = writeln!(out, "{}: valid ({jobs} jobs)", prepared.file);
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { EXIT_OK })
}
