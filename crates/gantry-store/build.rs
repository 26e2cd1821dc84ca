//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the migration files, and
//! cargo does not otherwise know that the crate depends on them (as sqlx's documentation advises).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
