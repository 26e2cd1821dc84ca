//! Planning a large pipeline: 2,000 job instances over 20 stages, with a 3-deep hidden `extends` chain,
//! `parallel:matrix` and `needs` on the previous stage. Two shapes: `lean` has just that (the target's
//! shape); `rich` adds per-job variables, an inherited four-rule `rules:if` set and per-job rules.
//!
//! `cargo bench -p gantry-pipeline --bench plan` (the target for the full compile is under 50 ms).
//! `cargo bench -p gantry-pipeline --bench plan -- --test` runs each benchmark once, as a smoke test.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gantry_pipeline::{Context, GitFacts, MemSources, compile, yaml};

/// Stages in the generated pipeline.
const STAGES: usize = 20;
/// Plain (non-matrix) jobs per stage.
const PLAIN_PER_STAGE: usize = 80;
/// `parallel:matrix` jobs per stage; each expands to `MATRIX_OS.len() * MATRIX_ARCH.len()` instances.
const MATRIX_PER_STAGE: usize = 5;
const MATRIX_OS: [&str; 2] = ["linux", "windows"];
const MATRIX_ARCH: [&str; 2] = ["amd64", "arm64"];
/// `needs` per job (stage 2 onwards), all in the previous stage.
const NEEDS_PER_JOB: usize = 3;

/// Job instances after `parallel` expansion: 20 × (80 + 5 × 4) = 2,000.
const EXPECTED_JOBS: usize =
    STAGES * (PLAIN_PER_STAGE + MATRIX_PER_STAGE * MATRIX_OS.len() * MATRIX_ARCH.len());

/// A small deterministic generator (SplitMix64), so that the file is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn stage(s: usize) -> String {
    format!("stage-{s:02}")
}

fn plain(s: usize, j: usize) -> String {
    format!("s{s:02}-job-{j:03}")
}

fn matrix(s: usize, j: usize) -> String {
    format!("s{s:02}-matrix-{j}")
}

/// The generated `.gitlab-ci.yml`; `rich` adds variables and rules to every job.
fn pipeline(rich: bool) -> String {
    let mut rng = Rng(0x6A17_2024);
    let mut y = String::with_capacity(1 << 20);
    y.push_str("stages:\n");
    for s in 0..STAGES {
        let _ = writeln!(y, "  - {}", stage(s));
    }
    y.push_str("\nvariables:\n");
    for i in 0..20 {
        let _ = writeln!(y, "  GLOBAL_{i:02}: \"value-{i}-$CI_COMMIT_SHORT_SHA\"");
    }
    y.push_str("  DEPLOY_ENV: production\n  REGISTRY: registry.example.com/group/project\n");
    y.push_str(
        r#"
workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == "push" || $CI_PIPELINE_SOURCE == "merge_request_event"
    - when: never

default:
  image: $REGISTRY/builder:latest
  retry: 1

.base:
  variables:
    CARGO_HOME: $CI_PROJECT_DIR/.cargo
    LEVEL: base
  before_script:
    - echo "base setup"
    - export PATH="$CARGO_HOME/bin:$PATH"
  cache:
    key: $CI_COMMIT_REF_SLUG
    paths: [.cargo/registry]
  tags: [linux, docker]
  interruptible: true

.with-artifacts:
  extends: .base
  variables:
    LEVEL: mid
  artifacts:
    paths: [out/]
    expire_in: 1 week
  timeout: 30 minutes

.job:
  extends: .with-artifacts
  variables:
    LEVEL: leaf
"#,
    );
    if rich {
        y.push_str(
            r#"  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule"
      when: never
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $DEPLOY_ENV =~ /^prod/
      variables:
        RELEASE: "true"
    - if: $CI_COMMIT_TAG != null || $FORCE_ALL == "1"
    - when: on_success
"#,
        );
    }
    for s in 0..STAGES {
        for j in 0..PLAIN_PER_STAGE {
            let _ = writeln!(y, "\n{}:", plain(s, j));
            let _ = writeln!(y, "  extends: .job\n  stage: {}", stage(s));
            if rich {
                let _ = writeln!(
                    y,
                    "  variables:\n    JOB_ID: \"{s}-{j}\"\n    TARGET: $GLOBAL_{:02}/{j}\n    OUT: out/$CI_JOB_NAME_SLUG",
                    rng.below(20)
                );
            }
            let _ = writeln!(
                y,
                "  script:\n    - echo \"building $JOB_ID\"\n    - make -j2 target-{j}"
            );
            if rich && j % 4 == 0 {
                // Some jobs add their own rule set in front of the inherited one.
                let _ = writeln!(
                    y,
                    "  rules:\n    - if: $CI_COMMIT_MESSAGE =~ /skip-{s}-{j}/\n      when: never\n    - if: $GLOBAL_{:02} && $CI_COMMIT_REF_NAME != \"gh-pages\"\n      when: on_success\n    - when: manual\n      allow_failure: true",
                    rng.below(20)
                );
            }
            if s > 0 {
                y.push_str("  needs:\n");
                let mut picked = Vec::new();
                while picked.len() < NEEDS_PER_JOB {
                    let p = rng.below(PLAIN_PER_STAGE + MATRIX_PER_STAGE);
                    if !picked.contains(&p) {
                        picked.push(p);
                    }
                }
                for p in picked {
                    if p < PLAIN_PER_STAGE {
                        let _ = writeln!(y, "    - {}", plain(s - 1, p));
                    } else {
                        // A matrix job, narrowed to one of its instances.
                        let _ = writeln!(
                            y,
                            "    - job: {}\n      parallel:\n        matrix:\n          - OS: {}\n            ARCH: {}",
                            matrix(s - 1, p - PLAIN_PER_STAGE),
                            MATRIX_OS[rng.below(MATRIX_OS.len())],
                            MATRIX_ARCH[rng.below(MATRIX_ARCH.len())],
                        );
                    }
                }
            }
        }
        for j in 0..MATRIX_PER_STAGE {
            let _ = writeln!(y, "\n{}:", matrix(s, j));
            let _ = writeln!(y, "  extends: .job\n  stage: {}", stage(s));
            let _ = writeln!(y, "  script:\n    - ./test.sh --os $OS --arch $ARCH");
            let _ = writeln!(
                y,
                "  parallel:\n    matrix:\n      - OS: [{}]\n        ARCH: [{}]",
                MATRIX_OS.join(", "),
                MATRIX_ARCH.join(", ")
            );
            if s > 0 {
                let _ = writeln!(y, "  needs:");
                for k in 0..NEEDS_PER_JOB {
                    let _ = writeln!(
                        y,
                        "    - {}",
                        plain(s - 1, (j * 7 + k * 13) % PLAIN_PER_STAGE)
                    );
                }
            }
        }
    }
    y
}

fn context() -> Context {
    Context {
        file: ".gitlab-ci.yml".into(),
        git: GitFacts {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            before_sha: "0".repeat(40),
            branch: Some("main".into()),
            message: "Bench commit\n\nBody.".into(),
            timestamp: "2024-01-02T03:04:05+00:00".into(),
            author: "Bench <bench@example.com>".into(),
            default_branch: "main".into(),
            remote_url: Some("git@gitlab.example.com:group/project.git".into()),
            user_name: "Bench".into(),
            user_email: "bench@example.com".into(),
            ..GitFacts::default()
        },
        ..Context::default()
    }
}

/// Compiles `src` once and checks it gives the expected plan, or the numbers would mean nothing.
fn check(sources: &MemSources, ctx: &Context) {
    let compiled = compile(sources, ctx);
    let errors: Vec<String> = compiled
        .errors()
        .map(ToString::to_string)
        .take(10)
        .collect();
    assert!(
        errors.is_empty(),
        "the generated pipeline has errors:\n{}",
        errors.join("\n")
    );
    let plan = compiled.plan.expect("a plan");
    assert_eq!(
        plan.jobs.len(),
        EXPECTED_JOBS,
        "job instances after parallel expansion"
    );
    assert!(
        plan.jobs
            .iter()
            .filter(|j| j.needs.as_ref().is_some_and(|n| !n.is_empty()))
            .count()
            > EXPECTED_JOBS / 2
    );
}

fn bench(c: &mut Criterion) {
    let ctx = context();
    let mut group = c.benchmark_group("plan");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for (shape, rich) in [("lean", false), ("rich", true)] {
        let src = pipeline(rich);
        let sources = MemSources::new(vec![(".gitlab-ci.yml".into(), src.clone())]);
        check(&sources, &ctx);
        group.throughput(Throughput::Bytes(src.len() as u64));
        group.bench_with_input(BenchmarkId::new("yaml_parse", shape), &src, |b, src| {
            b.iter(|| yaml::parse(black_box(src), 0).expect("valid YAML"));
        });
        group.bench_with_input(
            BenchmarkId::new("compile", shape),
            &sources,
            |b, sources| {
                // The result is dropped outside the timing: the binary exits without freeing it.
                b.iter_with_large_drop(|| compile(black_box(sources), black_box(&ctx)));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
