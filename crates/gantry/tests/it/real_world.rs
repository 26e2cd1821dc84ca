//! The real-world corpus (`tests/real-world/`, sources in its `SOURCES.md`): pipeline files of public
//! projects that run on GitLab. Each case copies one project's files into a temporary repository and
//! checks that `gantry run --list-json` compiles it into a non-empty job list, and that `gantry lint`
//! finds no error in it. Includes from elsewhere are served by a small HTTP server on 127.0.0.1 that
//! answers GitLab's files API and the remote URLs, from the project's `_remote/` directory.
//!
//! Where a case names jobs, they were worked out by hand from the YAML and GitLab's documentation.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::{Repo, gantry_cmd};

/// One pipeline of the corpus and the pipeline it is compiled for.
struct Case {
    /// The directory under `tests/real-world/`.
    dir: &'static str,
    /// The pipeline file, relative to the project.
    file: &'static str,
    /// The branch the commit is on.
    branch: &'static str,
    /// `--pipeline-source`.
    source: &'static str,
    /// `--variable`s; `{port}` is the local server's port, `{sha}` the commit.
    vars: &'static [(&'static str, &'static str)],
    /// The pipeline includes files from elsewhere (`remote`, `project`, `template`, `component`).
    fetch: bool,
    /// Jobs that must be in the list.
    expect: &'static [&'static str],
    /// Jobs that must not be in the list.
    absent: &'static [&'static str],
    /// The exact number of jobs, where it was counted by hand.
    jobs: Option<usize>,
}

const BASE: Case = Case {
    dir: "",
    file: ".gitlab-ci.yml",
    branch: "main",
    source: "push",
    vars: &[],
    fetch: false,
    expect: &[],
    absent: &[],
    jobs: None,
};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-world")
}

/// How a project's text is pointed at the local server.
#[derive(Clone)]
struct Rewrite {
    port: u16,
    /// `https://HOST/` becomes `http://127.0.0.1:PORT/HOST/`.
    hosts: Vec<String>,
    /// `component: HOST/` becomes `component: 127.0.0.1:PORT/`.
    component_hosts: Vec<String>,
}

impl Rewrite {
    fn apply(&self, text: &str) -> String {
        let mut t = text.to_string();
        for h in &self.hosts {
            t = t.replace(
                &format!("https://{h}/"),
                &format!("http://127.0.0.1:{}/{h}/", self.port),
            );
        }
        for h in &self.component_hosts {
            for q in ["", "'", "\""] {
                t = t.replace(
                    &format!("component: {q}{h}/"),
                    &format!("component: {q}127.0.0.1:{}/", self.port),
                );
            }
        }
        t
    }
}

/// A GitLab stand-in on 127.0.0.1 serving a project's `_remote/` directory.
struct Server {
    port: u16,
    /// Each request and the status it got.
    log: Arc<Mutex<Vec<String>>>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or_default();
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file under `root` that answers `target`, or the 404 message.
fn route(root: &Path, hosts: &[String], target: &str) -> Result<PathBuf, &'static str> {
    let path = target.split('?').next().unwrap_or_default();
    let relative = if let Some(rest) = path.strip_prefix("/api/v4/projects/") {
        let mut parts = rest.splitn(2, '/');
        let project = percent_decode(parts.next().unwrap_or_default());
        let tail = parts.next().unwrap_or_default();
        let Some(file) = tail
            .strip_prefix("repository/files/")
            .and_then(|f| f.strip_suffix("/raw"))
        else {
            return Err("404 Not Found");
        };
        if !root.join(&project).is_dir() {
            return Err("404 Project Not Found");
        }
        format!("{project}/{}", percent_decode(file))
    } else {
        let rest = path.trim_start_matches('/');
        let host = rest.split('/').next().unwrap_or_default();
        if !hosts.iter().any(|h| h == host) {
            return Err("404 Not Found");
        }
        percent_decode(rest)
    };
    if relative.split('/').any(|s| s == ".." || s.is_empty()) {
        return Err("404 File Not Found");
    }
    let file = root.join(relative);
    if file.is_file() {
        Ok(file)
    } else {
        Err("404 File Not Found")
    }
}

fn answer(mut stream: TcpStream, root: &Path, rewrite: &Rewrite, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = match route(root, &rewrite.hosts, &target) {
        Ok(file) => {
            let text = std::fs::read_to_string(&file).expect("read vendored file");
            ("200 OK", rewrite.apply(&text))
        }
        Err(message) => ("404 Not Found", format!("{{\"message\":\"{message}\"}}")),
    };
    log.lock()
        .expect("log")
        .push(format!("{} {target} -> {status}", request.trim_end()));
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(root: PathBuf, listener: TcpListener, rewrite: Rewrite) -> Server {
    let log = Arc::new(Mutex::new(Vec::new()));
    let server = Server {
        port: rewrite.port,
        log: Arc::clone(&log),
    };
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer(stream, &root, &rewrite, &log);
        }
    });
    server
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The project's files, except `_remote/`, rewritten for the local server.
fn project_files(dir: &Path, rewrite: &Rewrite) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>, rw: &Rewrite) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read corpus dir")
            .flatten()
            .collect();
        entries.sort_by_key(std::fs::DirEntry::path);
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel == "_remote" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out, rw);
            } else {
                let text = std::fs::read_to_string(&p).expect("corpus files are text");
                out.push((rel, rw.apply(&text)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out, rewrite);
    out
}

fn check(case: &Case) {
    let dir = corpus().join(case.dir);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().unwrap().port();
    let manifest: Value = std::fs::read_to_string(dir.join("_remote/remote.json"))
        .map(|t| serde_json::from_str(&t).expect("remote.json is JSON"))
        .unwrap_or(Value::Null);
    assert!(
        !case.fetch || !manifest.is_null(),
        "{}: a case that fetches needs _remote/remote.json",
        case.dir
    );
    let rewrite = Rewrite {
        port,
        hosts: strings(&manifest["rewrite_hosts"]),
        component_hosts: strings(&manifest["component_hosts"]),
    };
    let server = serve(dir.join("_remote"), listener, rewrite.clone());
    let files = project_files(&dir, &rewrite);
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let repo = Repo::new(&borrowed);
    if case.branch != "main" {
        repo.git(&["branch", "-m", case.branch]);
    }
    let sha = repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let cache = tempfile::tempdir().expect("cache dir");
    let url = format!("http://127.0.0.1:{}", server.port);

    // What the pipeline is compiled for, the same for `run` and `lint`.
    let mut pipeline: Vec<String> = vec!["--pipeline-source".into(), case.source.into()];
    for (k, v) in case.vars {
        let v = v
            .replace("{port}", &server.port.to_string())
            .replace("{sha}", &sha);
        pipeline.extend(["--variable".into(), format!("{k}={v}")]);
    }
    if case.fetch {
        pipeline.extend(["--gitlab-url".into(), url.clone()]);
    }
    let mut args: Vec<String> = ["run", "--list-json", "--file", case.file]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(pipeline.iter().cloned());
    // Gantry in the checkout, with its own include cache.
    let gantry = |args: &[String]| {
        gantry_cmd(repo.path())
            .args(args)
            .env("XDG_CACHE_HOME", cache.path())
            .output()
    };
    let out = gantry(&args).expect("gantry runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let requests = server.log.lock().unwrap().join("\n");
    let dump = format!(
        "{} {}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nrequests:\n{requests}",
        case.dir,
        case.file,
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(0), "{dump}");
    let list: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {dump}"));
    let names: BTreeSet<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {dump}"))
        .iter()
        .map(|j| j["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!names.is_empty(), "no jobs: {dump}");
    for job in case.expect {
        assert!(
            names.contains(*job),
            "`{job}` is missing: {names:#?}\n{dump}"
        );
    }
    for job in case.absent {
        assert!(!names.contains(*job), "`{job}` should not run: {names:#?}");
    }
    if let Some(n) = case.jobs {
        assert_eq!(names.len(), n, "job count: {names:#?}");
    }

    let mut lint: Vec<String> = ["lint", "--output", "json", "--file", case.file]
        .iter()
        .map(ToString::to_string)
        .collect();
    lint.extend(pipeline);
    let out = gantry(&lint).expect("gantry lint runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "lint: {e}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Any error is a file that GitLab runs and Gantry refuses.
    let errors: Vec<&Value> = report["diagnostics"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["severity"] == "error").collect())
        .unwrap_or_default();
    assert!(errors.is_empty(), "lint: {stdout}");
}

macro_rules! cases {
    ($($name:ident: $case:expr;)*) => {
        const CASES: &[Case] = &[$($case),*];
        $(
            #[test]
            fn $name() {
                check(&$case);
            }
        )*
    };
}

cases! {
    // Rules through two levels of `!reference`; in the upstream project the downstream jobs and the
    // Windows base jobs (never on push) are left out.
    openrgb_upstream: Case { dir: "CalcProgrammer1__OpenRGB", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "CalcProgrammer1/OpenRGB")],
        expect: &["Supported Devices", "Linux amd64 AppImage", "Windows 64"],
        absent: &["Windows 64 Base", "Windows 64 (Downstream)", "Linux amd64 AppImage (Downstream)"],
        jobs: Some(33), ..BASE };
    kitware_cmake_merge_request: Case { dir: "Kitware__CMake", branch: "topic",
        source: "merge_request_event",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "cmake/cmake"),
                ("CI_MERGE_REQUEST_ID", "1"), ("CI_MERGE_REQUEST_IID", "1")], ..BASE };
    kitware_paraview_schedule: Case { dir: "Kitware__ParaView", branch: "master", source: "schedule",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "paraview/paraview")], ..BASE };
    kitware_vtk_protected_branch: Case { dir: "Kitware__VTK", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "vtk/vtk"),
                ("CI_COMMIT_REF_PROTECTED", "true")], ..BASE };
    opentofu_component_protected_branch: Case { dir: "Kngfisher__OpenTofu",
        vars: &[("CI_PROJECT_PATH", "components/opentofu"), ("CI_COMMIT_REF_PROTECTED", "true")], ..BASE };
    nvidia_container_toolkit: Case { dir: "NVIDIA__nvidia-container-toolkit", ..BASE };
    openmw: Case { dir: "OpenMW__openmw", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")], ..BASE };
    alpinelinux_abuild: Case { dir: "alpinelinux__abuild", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["tests", "tests-pigz", "build-clang", "build-scan"], jobs: Some(4), ..BASE };
    // `parallel:matrix` names each job after its values; the release job needs a tag.
    alpinelinux_apk_tools: Case { dir: "alpinelinux__apk-tools", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["build:alpine: [x86]", "build:alpine: [riscv64]", "build:alpine-legacy", "build:fedora"],
        absent: &["build:alpine", "publish-static"], jobs: Some(12), ..BASE };
    // The review jobs run only in merge requests.
    archlinux_aurweb: Case { dir: "archlinux__aurweb", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "archlinux/aurweb")],
        expect: &["lint", "test"], absent: &["deploy_review", "provision_review", "stop_review"],
        jobs: Some(2), ..BASE };
    archlinux_infrastructure: Case { dir: "archlinux__infrastructure", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["ansible-lint", "terraform-validate"], jobs: Some(2), ..BASE };
    // On `develop` the end-to-end jobs and the job that needs them are left out by `except:variables`
    // (`except` with several keys excludes the job when any of them matches).
    baserow: Case { dir: "bram2w__baserow", branch: "develop",
        vars: &[("CI_DEFAULT_BRANCH", "develop")],
        absent: &["e2e-tests-group-1", "e2e-tests-group-4", "collect-e2e-test-coverage"], ..BASE };
    buildroot: Case { dir: "buildroot__buildroot", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["generate-gitlab-ci-yml", "buildroot-pipeline"], jobs: Some(2), ..BASE };
    // `include:local` with `rules`; `FULL_CI` turns on the whole pipeline (over 100 jobs).
    coq_full_ci: Case { dir: "coq__coq", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "coq/coq"), ("FULL_CI", "true")],
        expect: &["build:base", "test-suite:base:dev", "doc:refman", "library:ci-vst", "pipeline-stats"],
        absent: &["build:base+async"], ..BASE };
    graphviz: Case { dir: "evilkim__gitlab-graphviz-mirror",
        vars: &[("CI_PROJECT_PATH", "graphviz/graphviz")], ..BASE };
    // `rules:changes` on a new branch is true; `<<: [*a, *b]` merges both; `pages` is a job.
    fdroidclient: Case { dir: "f-droid__fdroidclient", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "fdroid/fdroidclient")],
        expect: &["pages", "deploy_nightly", "app assembleRelease test", "libs database schema", "no kvm warning"],
        absent: &["kvm 24 default x86"], jobs: Some(13), ..BASE };
    fdroidserver: Case { dir: "f-droid__fdroidserver", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "fdroid/fdroidserver")],
        expect: &["pages", "bandit", "macOS", "docker", "servergitmirrors", "podman system service"],
        absent: &["safety", "Windows"], jobs: Some(24), ..BASE };
    // The file defines the anchor `release-tag-rules` three times (valid YAML: the latest wins).
    mobilizon: Case { dir: "framasoft__mobilizon",
        vars: &[("CI_PROJECT_PATH", "framasoft/mobilizon")],
        expect: &["pages", "e2e: [firefox]", "e2e: [chromium]", "package-app-dev", "deps"],
        absent: &["package-app: [debian-bookworm]", "build-docker-main", "docker-latest"],
        jobs: Some(11), ..BASE };
    // The nightly schedule; `rules:changes` is true in a pipeline without a push.
    gajim_nightly: Case { dir: "gajim__gajim", branch: "master", source: "schedule",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("NIGHTLY_BUILD", "true")],
        expect: &["test-pyright", "prepare-build", "build-debian-nightly", "deploy-windows-nightly"],
        absent: &["build-windows", "deploy-unix", "deploy-windows", "deploy-flatpak"],
        jobs: Some(13), ..BASE };
    gromacs_merge_request: Case { dir: "gromacs__gromacs", branch: "topic", source: "merge_request_event",
        vars: &[("CI_PROJECT_NAMESPACE", "gromacs"), ("CI_PROJECT_PATH", "gromacs/gromacs"),
                ("CI_MERGE_REQUEST_IID", "1"), ("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main")], ..BASE };
    // `only: [branches@libssh/libssh-mirror]` matches in that project; MR-only jobs and the
    // Coverity job (its variables are unset) are left out; `fedora/coverage` is a 3-entry matrix.
    libssh_master: Case { dir: "libssh__libssh-mirror", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "libssh/libssh-mirror")],
        expect: &["freebsd/openssl_1.1.1/x86_64", "macos-m1", "fedora/coverage: [mbedtls]",
                  "fedora/coverage_merge", "visualstudio/x86"],
        absent: &["review", "header-standalone", "fedora/abidiff", "coverity", "clusterfuzzlite"],
        jobs: Some(41), ..BASE };
    // `make-rpm-all` runs only in merge requests. (`pages` has `only: {refs: [main], changes}`;
    // Gantry compares `changes` with `main` itself here, so it is not asserted either way.)
    lvm2: Case { dir: "lvmteam__lvm2", vars: &[("CI_PROJECT_PATH", "lvmteam/lvm2")],
        expect: &["approve1", "make-rpm", "test1", "reboot: [f42]"],
        absent: &["make-rpm-all"], ..BASE };
    // `only` lists of branch names: a push to `releases/all_major` runs the major-release jobs.
    mayan_edms_major_release: Case { dir: "mayan-edms__Mayan-EDMS", branch: "releases/all_major",
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["job_docker_push_major", "job_documentation_push", "job_demo_deploy"],
        absent: &["job_docker_push_minor", "job_docker_nightly", "job_docker_testing"],
        jobs: Some(12), ..BASE };
    // Matrix values in flow sequences closed left of their key (`]` under `- DISABLE_FLAGS: [`),
    // which GitLab's parser accepts; every job is for `cryptsetup/cryptsetup` only, and valgrind's
    // include only when `TEST_VALGRIND` is set.
    cryptsetup: Case { dir: "mbroz__cryptsetup",
        vars: &[("CI_PROJECT_PATH", "cryptsetup/cryptsetup")],
        expect: &["test-gcc-disable-compiles: [hw-opal]", "test-gcc-disable-compiles: [keyring]",
                  "test-main-commit-job-rawhide: [--disable-kernel_crypto]", "test-rawhide-ctT500"],
        absent: &["test-commit-job-valgrind"], ..BASE };
    // `pages` has `only` twice; the last, `master@openconnect/openconnect`, wins.
    openconnect: Case { dir: "openconnect__openconnect", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "openconnect/openconnect")],
        expect: &["pages", "Signoff", "CentOS7/GnuTLS", "static-analyzer/OpenSSL/Fedora"],
        absent: &["Coverity"], jobs: Some(23), ..BASE };
    // Child pipelines (`trigger:include:local`) under a 13-entry `parallel:matrix`.
    salsa_ci_pipeline: Case { dir: "ottok__salsa-ci-pipeline", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "salsa-ci-team/pipeline")],
        expect: &["images",
                  "test-pipeline-non-default-archs: [https://salsa.debian.org/debian/grep, debian/master, 1, 1, 0, 0, 0]"],
        absent: &["clean images", "elxr-images"], jobs: Some(15), ..BASE };
    // `include` with `rules`: the audit schedule includes only the security file, so the template
    // and project includes (under `$SECURITY_AUDIT != "1"`) are not fetched.
    database_lab_engine_security_audit: Case { dir: "postgres-ai__database-lab-engine", branch: "master",
        source: "schedule",
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("SECURITY_AUDIT", "1")],
        expect: &["cve-govulncheck", "cve-pnpm-audit", "cve-trivy-image", "cve-summary"],
        absent: &["empty-job"], jobs: Some(4), ..BASE };
    trezor_firmware: Case { dir: "trezor__trezor-firmware", ..BASE };
    flac: Case { dir: "xiph__flac", branch: "master",
        vars: &[("CI_DEFAULT_BRANCH", "master")], ..BASE };

    // These include files from elsewhere, served by the local server.
    // The template's `workflow` is replaced by the project's own.
    fetch_opus_template: Case { dir: "xiph__opus", fetch: true,
        expect: &["autoconf", "cmake", "meson x86_64", "meson arm64", "makefile", "whitespace", "ci-fairy"],
        jobs: Some(7), ..BASE };
    // The project narrows the template's `code_quality` to tags; `include:local` with a glob.
    fetch_yunohost_nested_template: Case { dir: "YunoHost__yunohost", branch: "dev", fetch: true,
        vars: &[("CI_DEFAULT_BRANCH", "dev")],
        expect: &["build-yunohost", "install-postinstall", "test-helpers2", "autofix-translated-strings"],
        absent: &["code_quality", "code_quality_html"], ..BASE };
    fetch_passbolt_nested_template: Case { dir: "passbolt__passbolt_api", branch: "master", fetch: true,
        vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["code_quality", "static-analysis", "seq-php8.2-mysql8-testsuite-2-of-2"], ..BASE };
    // Salsa CI's jobs, switched by variables: reprotest is disabled here, aptly by default, and
    // wrap-and-sort, disabled by default, is enabled here.
    fetch_git_buildpackage_salsa_remote: Case { dir: "agx__git-buildpackage", file: "debian/salsa-ci.yml",
        branch: "master", fetch: true, vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["build", "lintian", "wrap-and-sort"], absent: &["reprotest", "aptly"],
        ..BASE };
    // `SALSA_CI_DISABLE_APTLY: 0` in the project wins over the included default of 1.
    fetch_nsd_salsa_remote: Case { dir: "NLnetLabs__nsd", file: "debian/salsa-ci.yml",
        branch: "master", fetch: true, vars: &[("CI_DEFAULT_BRANCH", "master")],
        expect: &["build", "reprotest", "aptly", "wrap-and-sort"],
        absent: &["atomic-reprotest: [aslr]"], ..BASE };
    fetch_opentofu_component_at_commit: Case { dir: "Kngfisher__OpenTofu",
        file: "tests/integration-tests/Defaults.gitlab-ci.yml", source: "parent_pipeline",
        fetch: true,
        vars: &[("CI_PROJECT_PATH", "components/opentofu"),
                ("GITLAB_OPENTOFU_IMAGE_BASE", "registry.gitlab.com/components/opentofu"),
                ("GITLAB_OPENTOFU_BASE_IMAGE_OS", "alpine"), ("OPENTOFU_VERSION", "1.9.0"),
                ("TEST_GITLAB_TOFU_ROOT_DIR", "tests/iac"),
                ("TEST_GITLAB_TOFU_STATE_NAME", "ci-integration")], ..BASE };
    // The commit-lint component's rules leave its jobs out on `main`; `renovate` runs on schedules.
    fetch_mender_projects_and_components: Case { dir: "mendersoftware__mender", fetch: true,
        vars: &[("CI_PROJECT_PATH", "Northern.tech/Mender/mender")],
        expect: &["build-with-libc++", "test:unit", "test:static:asan"],
        absent: &["lint:commit", "renovate"], ..BASE };
    fetch_mendertesting_components: Case { dir: "mendersoftware__mendertesting", branch: "master",
        fetch: true,
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "Northern.tech/Mender/mendertesting")],
        ..BASE };
    // Only the pipeline file is in the corpus, so the build jobs' `rules:exists` (meson.build,
    // autogen.sh) are false; `translations` runs since `changes` is true on a new branch.
    fetch_xfce4_panel_project: Case { dir: "xfce-mirror__xfce4-panel", branch: "master", fetch: true,
        vars: &[("CI_DEFAULT_BRANCH", "master"), ("CI_PROJECT_PATH", "xfce/xfce4-panel")],
        expect: &["translations"], absent: &["build-gcc-meson", "rustfmt"], ..BASE };
}

#[test]
fn every_corpus_directory_is_a_case_and_is_sourced() {
    let sources = std::fs::read_to_string(corpus().join("SOURCES.md")).expect("SOURCES.md");
    let mut dirs: Vec<String> = std::fs::read_dir(corpus())
        .expect("corpus")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 30, "{} projects", dirs.len());
    for d in &dirs {
        assert!(
            CASES.iter().any(|c| c.dir == d),
            "`{d}` has no case in real_world.rs"
        );
        assert!(
            sources.contains(&format!("| `{d}` |")),
            "`{d}` is not in SOURCES.md"
        );
    }
    for c in CASES {
        assert!(
            corpus().join(c.dir).join(c.file).is_file(),
            "{}/{}",
            c.dir,
            c.file
        );
    }
}
