//! A pipeline as GitLab draws it: stages as columns of jobs, in the order of the stages, and each
//! `needs` edge as an SVG curve from the needed job's right side to the needing job's left side.
//! The layout is computed here, so the page needs no script to draw it.

use gantry_api::Job;

/// A job's box.
pub(crate) const BOX_W: u32 = 220;
/// A job's box: room for the name, the status line, the marks line and one button.
pub(crate) const BOX_H: u32 = 100;
const COL_GAP: u32 = 72;
const ROW_GAP: u32 = 14;
/// Room for the stage names above the columns.
const HEAD: u32 = 30;

/// Where a job sits.
pub(crate) struct Placed<'a> {
    pub job: &'a Job,
    pub x: u32,
    pub y: u32,
}

/// A `needs` edge: from the needed job to the job that needs it, with its SVG path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub from: String,
    pub to: String,
    pub path: String,
}

/// The laid-out graph.
pub(crate) struct Layout<'a> {
    /// Each stage with its column's x.
    pub stages: Vec<(&'a str, u32)>,
    pub jobs: Vec<Placed<'a>>,
    pub edges: Vec<Edge>,
    pub width: u32,
    pub height: u32,
}

/// Whether `name` is `need` or one of its `parallel` jobs (`need 1/3`, `need: [a, b]`).
fn is_need(name: &str, need: &str) -> bool {
    name == need
        || name.strip_prefix(need).is_some_and(|rest| {
            rest.strip_prefix(' ').is_some_and(|r| {
                r.starts_with('[')
                    || r.split_once('/').is_some_and(|(a, b)| {
                        a.bytes().all(|c| c.is_ascii_digit())
                            && b.bytes().all(|c| c.is_ascii_digit())
                    })
            }) || rest.starts_with(": [")
        })
}

/// Lays out `jobs` (the latest attempt of each, in pipeline order): stages in the order they first
/// appear, jobs in their stage in that order.
pub(crate) fn layout(jobs: &[Job]) -> Layout<'_> {
    let mut stages: Vec<(&str, u32)> = Vec::new();
    let mut rows: Vec<u32> = Vec::new();
    let mut placed = Vec::with_capacity(jobs.len());
    for job in jobs {
        let col = match stages.iter().position(|(s, _)| *s == job.stage) {
            Some(i) => i,
            None => {
                let x = u32::try_from(stages.len()).unwrap_or(u32::MAX) * (BOX_W + COL_GAP);
                stages.push((&job.stage, x));
                rows.push(0);
                stages.len() - 1
            }
        };
        placed.push(Placed {
            job,
            x: stages[col].1,
            y: HEAD + rows[col] * (BOX_H + ROW_GAP),
        });
        rows[col] += 1;
    }
    let mut edges = Vec::new();
    for to in &placed {
        for need in to.job.needs.iter().flatten() {
            for from in placed.iter().filter(|f| is_need(&f.job.name, need)) {
                let (x1, y1) = (from.x + BOX_W, from.y + BOX_H / 2);
                let (x2, y2) = (to.x, to.y + BOX_H / 2);
                let mid = (x1 + x2) / 2;
                edges.push(Edge {
                    from: from.job.name.clone(),
                    to: to.job.name.clone(),
                    path: format!("M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}"),
                });
            }
        }
    }
    let cols = u32::try_from(stages.len()).unwrap_or(u32::MAX);
    let most = rows.iter().copied().max().unwrap_or(0);
    Layout {
        stages,
        jobs: placed,
        edges,
        width: (cols * (BOX_W + COL_GAP))
            .saturating_sub(COL_GAP)
            .max(BOX_W),
        height: HEAD + most * (BOX_H + ROW_GAP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::job;

    #[test]
    fn stages_are_columns_and_needs_are_edges() {
        let mut test = job(3, "test", "test");
        test.needs = Some(vec!["build".into()]);
        let mut deploy = job(4, "deploy", "deploy");
        deploy.needs = Some(vec!["test".into(), "lint".into()]);
        let jobs = vec![
            job(1, "build 1/2", "build"),
            job(2, "build 2/2", "build"),
            test,
            job(5, "lint", "test"),
            deploy,
        ];
        let l = layout(&jobs);
        assert_eq!(
            l.stages.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            ["build", "test", "deploy"]
        );
        let at = |n: &str| {
            let p = l.jobs.iter().find(|p| p.job.name == n).unwrap();
            (p.x, p.y)
        };
        assert_eq!(at("build 2/2").0, at("build 1/2").0);
        assert!(at("build 2/2").1 > at("build 1/2").1);
        assert!(at("test").0 > at("build 1/2").0);
        let edges: Vec<(&str, &str)> = l
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("build 1/2", "test"),
                ("build 2/2", "test"),
                ("test", "deploy"),
                ("lint", "deploy")
            ]
        );
        assert!(l.edges[0].path.starts_with(&format!("M{} ", BOX_W)));
    }

    #[test]
    fn parallel_names() {
        assert!(is_need("build 1/2", "build"));
        assert!(is_need("build: [linux, amd64]", "build"));
        assert!(!is_need("builder", "build"));
        assert!(!is_need("build x", "build"));
    }
}
