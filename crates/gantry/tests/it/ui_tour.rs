//! A tour of the web UI on a realistic project's history, for the pictures of README.md and
//! `docs/ui.md` (`scripts/screenshots.sh` copies them from `GANTRY_UI_SCREENSHOTS/tour/` to
//! `docs/screenshots/`): three pipelines of a Go service, each building, testing with a JUnit
//! report and coverage, gating and deploying to staging, then a rollback of staging. It checks
//! what each picture is meant to show.

use gantry_api::PipelineStatus;
use serde_json::json;

use crate::server::{ADMIN, Setup, Store, job_named, retrigger, wait_for};
use crate::ui::{browser, runtime, until};

const CI: &str = r#"stages: [build, test, gate, deploy]
build:
  stage: build
  before_script:
    - echo "go version go1.22.2 linux/amd64"
  script:
    - echo "go build -trimpath -o bin/payments ./cmd/payments"
    - printf '\033[32mok\033[0m   bin/payments\n'
unit:
  stage: test
  needs: [build]
  coverage: '/total:\s+\(statements\)\s+(\d+\.\d+)%/'
  script:
    - sh test.sh
  after_script:
    - echo "test results saved"
  artifacts:
    reports:
      junit: report.xml
lint:
  stage: test
  needs: [build]
  script:
    - echo "golangci-lint run ./..."
    - echo "0 issues."
quality:
  stage: gate
  needs: [unit, lint]
  gate:
    coverage: ">= 70"
    tests_failed: "== 0"
    tests_total: "> 0"
staging:
  stage: deploy
  needs: [quality]
  environment: {name: staging, url: "https://staging.payments.example"}
  script:
    - echo "deploying $CI_COMMIT_SHORT_SHA to staging"
production:
  stage: deploy
  needs: [staging]
  when: manual
  environment: {name: production}
  script:
    - echo "deploying $CI_COMMIT_SHORT_SHA to production"
"#;

/// `go test`'s output for the coverage in `COVERAGE`, and its JUnit report.
const TEST_SH: &str = r#"set -e
cov=$(cat COVERAGE)
echo "go test -race -coverprofile=cover.out ./..."
for t in TestCharge TestRefund TestIdempotencyKey TestLedgerBalance TestWebhookSignature; do
  printf '\033[32m--- PASS\033[0m: %s (0.01s)\n' "$t"
done
printf 'ok  \tpayments/internal/ledger\t0.412s\tcoverage: %s%% of statements\n' "$cov"
echo "total:  (statements)  ${cov}%"
{
  echo '<testsuites><testsuite name="payments/internal/ledger" tests="5" failures="0">'
  for t in TestCharge TestRefund TestIdempotencyKey TestLedgerBalance TestWebhookSignature; do
    echo "<testcase classname=\"ledger\" name=\"$t\" time=\"0.01\"/>"
  done
  echo '</testsuite></testsuites>'
} > report.xml
"#;

#[test]
fn a_tour_of_a_go_services_history() {
    let s = Setup::new(Store::Sqlite);
    let repo = crate::Repo::new(&[
        (".gitlab-ci.yml", CI),
        ("test.sh", TEST_SH),
        ("COVERAGE", "74.2\n"),
    ]);
    repo.git(&[
        "commit",
        "-q",
        "--amend",
        "-m",
        "Charge: idempotency keys for retries",
    ]);
    let api = s.add("payments", &repo);
    let _agent = s.agent("build-01");
    let mut ids = vec![api.trigger("payments")];
    assert_eq!(api.finished(ids[0]).status, PipelineStatus::Success);
    for (cov, title) in [
        ("76.8", "Refund: partial refunds"),
        ("78.5", "Ledger: balance check"),
    ] {
        std::fs::write(repo.path().join("COVERAGE"), format!("{cov}\n")).unwrap();
        repo.git(&["commit", "-q", "-am", title]);
        let id = retrigger(&api, "payments", *ids.last().unwrap());
        assert_eq!(api.finished(id).status, PipelineStatus::Success);
        ids.push(id);
    }
    let last = api.pipeline(ids[2]);
    let unit = job_named(&last, "unit").id;
    let history = api.get_json("/api/v1/projects/payments/environments/staging/deployments");
    assert_eq!(history.as_array().unwrap().len(), 3, "{history}");
    let second = history[1]["id"].as_i64().unwrap();
    let (status, body) = api.post(
        "/api/v1/projects/payments/environments/staging/rollback",
        &json!({"to": second}),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("the rollback to succeed", || {
        let h = api.get_json("/api/v1/projects/payments/environments/staging/deployments");
        (h[0]["status"] == "success" && h[1]["status"] == "rolled_back").then_some(())
    });

    let rt = runtime();
    rt.block_on(async {
        let owned = browser(&s.server.url).await;
        let b = &owned;
        b.sign_in_to_projects(ADMIN).await;
        b.screenshot("tour/projects").await;

        b.open("/projects/payments").await;
        until("three pipelines", || async move {
            (b.count("table.pipelines tbody tr").await == 3).then_some(())
        })
        .await;
        b.screenshot("tour/pipelines").await;

        b.open(&format!("/pipelines/{}", ids[2])).await;
        assert_eq!(b.count(".graph .job").await, 6);
        b.screenshot("tour/pipeline").await;

        b.open(&format!("/jobs/{unit}")).await;
        until("the unit job's log", || async move {
            b.text("#log").await.contains("total:").then_some(())
        })
        .await;
        b.screenshot("tour/job").await;

        b.open(&format!("/pipelines/{}/reports", ids[2])).await;
        assert!(b.text("main").await.contains("78.5"));
        b.screenshot("tour/reports").await;

        b.open("/projects/payments/environments/staging").await;
        assert_eq!(b.count("section.deployment").await, 4);
        b.screenshot("tour/environment").await;
    });
}
