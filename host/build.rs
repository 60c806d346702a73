//! Build script (guest plugins are built here in a later step).
fn main() {}
