//! `conduit-publisher`: not built yet (see its issue); the crate exists so the workspace layout is complete.
