//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding
//! or editing a migration would not rebuild the binary, which would then run
//! the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
