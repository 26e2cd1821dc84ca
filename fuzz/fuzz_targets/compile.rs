//! Arbitrary bytes as `.gitlab-ci.yml` through the whole compiler. The expanded tree is rendered with
//! `--preview`'s YAML writer, and that output must read back as YAML.
#![no_main]

use gantry_pipeline::{Context, GitFacts, MemSources, compile, preview, yaml};
use libfuzzer_sys::fuzz_target;

/// A file the fuzzed pipeline can `include`, with `spec:inputs`.
const TEMPLATE: &str = "spec:
  inputs:
    stage: {default: test}
    image: {default: alpine}
---
.tpl:
  stage: $[[ inputs.stage ]]
  image: $[[ inputs.image ]]
  script: [echo tpl]
";

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let sources = MemSources::new(vec![
        (".gitlab-ci.yml".into(), src.to_string()),
        ("ci/tpl.yml".into(), TEMPLATE.into()),
        ("Cargo.toml".into(), String::new()),
    ]);
    let ctx = Context {
        file: ".gitlab-ci.yml".into(),
        git: GitFacts {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: Some("main".into()),
            default_branch: "main".into(),
            message: "Fix the build".into(),
            ..GitFacts::default()
        },
        ..Context::default()
    };
    let compiled = compile(&sources, &ctx);
    let text = preview::to_yaml(&compiled.expanded);
    if let Err(e) = yaml::parse(&text, 0) {
        panic!("preview output does not parse back: {e}\n--- preview ---\n{text}--- end ---");
    }
});
