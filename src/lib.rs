//! tplbuild: assemble Debian-based root filesystems from template images kept
//! in an OCI registry.
//!
//! The flow of data (see DESIGN.md): a [`buildfile`] is parsed, its FROM is
//! resolved to a manifest digest, [`plan`] gives every step a content key,
//! [`build`] looks each key up in the [`store`] (and registry caches) or runs
//! the step in an [`engine`] and turns the diff into a normalized [`layer`];
//! the final image goes to [`export`]ers and the [`registry`].

pub mod build;
pub mod buildfile;
pub mod cache;
pub mod cli;
pub mod emulation;
pub mod engine;
pub mod epoch;
pub mod export;
pub mod failure;
pub mod human;
pub mod image;
pub mod layer;
pub mod lock;
pub mod lockfile;
pub mod oci;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod sbom;
pub mod sign;
pub mod stage;
pub mod store;
pub mod template;
pub mod tls;
pub mod transfer;
