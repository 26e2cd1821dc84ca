//! Small pieces of text every page shows the same way.

use maud::{Markup, html};

/// A commit's short SHA: its first eight characters.
pub(crate) fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

/// A time, shown as an age by the script (`datetime` stays the exact time).
pub(crate) fn time(at: &str) -> Markup {
    html! { time datetime=(at) title=(at) { (at) } }
}
